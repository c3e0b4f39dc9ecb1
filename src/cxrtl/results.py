"""The typed shapes of the results that cross module boundaries and land on disk as JSON.

They are ``TypedDict``s, not classes: what a function returns is exactly what ``summary.json``,
``metrics.json`` and ``results.json`` hold, so a reader of the files and a caller of the API see one shape.
``total=False`` marks keys that only some results carry (for example ``calibrated`` after ``--calibrate``).
"""

from __future__ import annotations

from typing import Any, TypedDict


class _ClassMetricsRequired(TypedDict):
    precision: float | None  # None when the class is never predicted (undefined, not 0)
    recall: float | None  # None when the class is absent from the subset
    f1: float | None
    support: int
    predicted: int
    precision_ci: list[float] | None
    recall_ci: list[float] | None


class ClassMetrics(_ClassMetricsRequired, total=False):
    """One class of :class:`Metrics` ``per_class``; intervals are ``[lo, hi]`` or None when undefined."""

    f1_ci: list[float] | None  # bootstrap; absent when no bootstrap was run
    ci_unreliable: bool  # fewer than 10 positive or negative images of this class: intervals say little
    ci_note: str | None  # why, in words (None when reliable)


class Average(TypedDict, total=False):
    """``macro`` or ``weighted`` precision, recall and F1 (bootstrap intervals when computed)."""

    precision: float
    recall: float
    f1: float
    precision_ci: list[float] | None
    recall_ci: list[float] | None
    f1_ci: list[float] | None


class MetricsSource(TypedDict, total=False):
    """What was evaluated: the checkpoint, the data root, the split file and the subset."""

    checkpoint: str
    data: str
    split: str | None
    subset: str


class _MetricsRequired(TypedDict):
    classes: list[str]
    n: int
    correct: int
    accuracy: float
    accuracy_ci: list[float] | None
    loss: float
    per_class: dict[str, ClassMetrics]
    weighted: Average
    macro: Average
    confusion_matrix: list[list[int]]
    confusion_matrix_axes: dict[str, Any]
    roc_auc: dict[str, float | None]
    roc_auc_ci: dict[str, list[float] | None]
    roc_auc_micro: float | None
    roc_auc_macro: float | None
    roc_auc_weighted: float | None  # weighted by class support, as scikit-learn's average="weighted"
    brier: float
    calibration: dict[str, Any]
    intervals: dict[str, Any]
    ece: float


class Metrics(_MetricsRequired, total=False):
    """``metrics.json``: what :func:`cxrtl.compute_metrics` and :func:`cxrtl.evaluate` return.

    Rows of the confusion matrix are true classes, columns predicted ones, both in ``classes`` order.
    Intervals are 95% (Wilson for proportions, percentile bootstrap over images for F1, averages and AUC).
    """

    source: MetricsSource
    calibrated: dict[str, Any]  # temperature scaling: temperature, loss, ece, calibration bins
    ood: dict[str, Any]  # the OOD guard on this subset: false-flag rate (+ --ood-data: AUROC, true-flag rate)
    external: dict[str, Any]  # an external set: class map, dropped per label, absent classes, overlap check
    operating_point: dict[str, Any]  # threshold chosen on validation for a target sensitivity
    cam_in_lungs: dict[str, Any]  # share of Grad-CAM energy inside the lung mask
    figures: list[str]
    provenance: dict[str, Any]  # what produced it: cxrtl/torch/timm/Python versions, git commit, device
    conformal: ConformalResult  # with ``evaluate --conformal ALPHA``
    fitted_on: dict[
        str, str
    ]  # which subset ("calibration" or "val") each reported decision setting was fitted on
    bootstrap: dict[str, Any]  # resamples, seed, and per class how many resamples each interval used/dropped


class ConformalResult(TypedDict, total=False):
    """``metrics.json["conformal"]``: split-conformal (LAC) sets fitted on validation, scored on the test set."""

    alpha: float
    method: str  # "LAC"
    threshold: float
    coverage: float
    mean_set_size: float
    per_class_coverage: dict[str, float | None]
    singleton_fraction: float
    empty_fraction: float
    temperature: float | None  # the temperature the threshold was fitted at (predictions must use it)
    fitted_on: str  # "calibration" when the split has a calibration subset, else "val"
    n_calibration: int  # images the threshold was fitted on
    class_thresholds: dict[str, float] | None  # --conformal-by-class: one threshold per class (Mondrian)
    guarantee: str  # marginal, or per class (Mondrian), in words
    per_class_n: dict[str, int]  # test images of each class behind per_class_coverage
    n: int  # test images scored


class FitResult(TypedDict):
    """What the training loop returns: the best epoch by validation accuracy and the epoch history."""

    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    epochs_completed: int
    epochs: int
    seconds: float
    history: list[dict[str, float]]


class _RunSummaryRequired(TypedDict):
    run_dir: str
    finished: bool
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    epochs_completed: int
    epochs: int
    seconds: float
    best_checkpoint: str
    classes: list[str]
    backbone: str
    split_sizes: dict[str, int]
    world_size: int
    device: str
    config: dict[str, Any]
    provenance: dict[str, Any]  # cxrtl/torch/timm/Python versions, git commit, device name


class RunSummary(_RunSummaryRequired, total=False):
    """``summary.json`` of a run directory: what :func:`cxrtl.train` returns."""

    ood: dict[str, Any] | None  # the OOD guard fitted at the end: layer, threshold, percentile, n


class ReproductionRun(TypedDict):
    """One entry of ``results.json`` ``runs``: a trained configuration and its test metrics."""

    name: str
    experiment: list[int]  # the paper's experiments (1-3) this run belongs to
    dataset: str  # "covid" or "pneumonia"
    pretraining: str | None
    protocol: str | None  # the pneumonia split protocol; None for COVID runs
    config: dict[str, Any]
    best_epoch: int | None
    best_val_acc: float | None
    seconds: float | None
    run_dir: str
    test: Metrics
    configuration: str  # the configuration this run is one seed of
    seed: int
    precision: dict[str, str]  # {"train": ..., "eval": ...}


class Summary(TypedDict):
    """Mean, standard deviation and range of one metric over a configuration's seeds."""

    mean: float | None
    sd: float | None
    min: float | None
    max: float | None


class Configuration(TypedDict, total=False):
    """One entry of ``results.json`` ``configurations``: a configuration over its seeds."""

    name: str
    experiment: list[int]
    dataset: str
    seeds: list[int]
    runs: list[str]
    best_val_acc: Summary
    accuracy: Summary
    macro_f1: Summary
    auc: Summary  # binary tasks only


class _ComparisonRequired(TypedDict):
    experiment: int
    dataset: str  # "covid" or "pneumonia": whose test images
    a: str
    b: str
    metric: str  # "accuracy"
    difference: float  # a minus b
    ci95: list[float] | None  # Newcombe's paired hybrid score interval; None when ``identical``
    p_value: float | None  # McNemar exact; None when ``identical``
    method: str
    n: int
    seeds: list[int]  # how many seeds each side averaged: [a, b]
    discordant: list[int]  # [a right only, b right only]


class Comparison(_ComparisonRequired, total=False):
    """One entry of ``results.json`` ``comparisons``: a paired comparison on the same test images."""

    identical: str  # why a and b are the same training job (not tested, not in the family)
    difference_of: str  # what ``difference`` is: the two runs' or the seed-averaged ensembles' accuracies
    p_adjusted: float | None  # Holm over the family of tested comparisons; None when ``identical``
    adjustment: str  # "holm"
    family: int  # how many comparisons were adjusted together
    headline: str | None  # "seed_level" (>= 2 seeds a side) or "ensemble": which test the verdict uses
    verdict: str  # "<a or b> is better", "not distinguishable", "the same configuration, not tested"
    seed_level: dict[str, Any]  # two-level bootstrap: difference (of the tables' mean accuracies), ci95,
    # p_value, p_adjusted, adjustment, family, resamples, bootstrap_seed, method


class ReproductionResults(TypedDict, total=False):
    """``results.json``: what :func:`cxrtl.reproduce` returns."""

    runs: list[ReproductionRun]
    configurations: list[Configuration]
    comparisons: list[Comparison]
    segmenter: dict[str, Any] | None  # the reproduction's lung U-Net and its test Dice/IoU, when trained
    pneumonia_masks: (
        dict[str, Any] | None
    )  # source (segmenter/given), dir, split, written: Exp. 3's CAM masks
    external: dict[str, Any] | None  # reproduce --external: the best COVID model on an external set, compared
    reproduction: dict[str, Any]  # identity, experiments, seconds, covid_best, synthetic, splits notes
    report: dict[str, str]  # report.md / report.html paths
    provenance: dict[str, Any]  # cxrtl/torch/timm/Python versions, git commit, device name
