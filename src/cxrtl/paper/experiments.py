"""The paper's three experiments as plans: which runs to train, on what, and how they depend on each other.

A plan is data, not code that trains: :func:`plan_runs` turns ``--experiments 1,2,3`` and a profile into
an ordered list of :class:`RunPlan`, sharing runs that are identical across experiments (Exp. 1's raw
3-channel 1-CF run *is* Exp. 2's 1-CF run). ``cxrtl.paper.reproduce`` executes the list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import CxrtlError

EXPERIMENTS = (1, 2, 3)
COVID_BEST = "covid-best"  # init placeholder: the best Exp. 2 run, chosen by validation accuracy


@dataclass(frozen=True)
class Profile:
    """How big a reproduction is. ``paper`` is the paper's §IV; ``quick`` fits a 2-core CPU."""

    name: str
    image_size: int
    epochs: int
    batch_size: int
    milestones: tuple[int, ...]
    max_per_class: int | None  # subsample each class of each dataset to at most this many images
    backbone: str = "densenet121"
    n_boot: int = 1000  # bootstrap resamples for the F1/AUC intervals of each test evaluation
    # resamples of each comparison's two-level bootstrap: milliseconds each, and at 200 the lower limit of an
    # accuracy difference moved by 2.5 points between bootstrap seeds (1.0 at 1000)
    comparison_resamples: int = 2000
    segmenter_epochs: int = 0  # a lung U-Net trained on the COVID split (0: none)
    segmenter_size: int = 64


PROFILES = {
    "paper": Profile(
        "paper", image_size=224, epochs=30, batch_size=16, milestones=(8, 15, 25), max_per_class=None
    ),
    # Small images, few epochs, a few hundred images: every stage runs, on a laptop, in minutes.
    "quick": Profile(
        "quick",
        image_size=48,
        epochs=4,
        batch_size=16,
        milestones=(3,),
        max_per_class=70,
        n_boot=200,
        segmenter_epochs=5,
    ),
}


@dataclass(frozen=True)
class RunPlan:
    """One training run of the reproduction and the table rows it fills."""

    name: str
    dataset: str  # "covid" | "pneumonia"
    experiments: tuple[int, ...]
    input: str = "raw"
    channels: int = 3
    loss: str = "wce-1cf"
    focal_gamma: float = 2.0  # used by loss="focal" only
    focal_alpha: str = "none"  # none | 1cf | icf: per-class alpha of the focal loss
    init: str = "imagenet"  # "imagenet" | "none" | COVID_BEST
    scheme: str = "finetune"
    keep_hidden: bool = False
    pretraining: str = "ImageNet"  # the paper's "Pre-trained Dataset" column (Tables V-VI)
    depends_on: tuple[str, ...] = field(default=())

    def to_config(self) -> dict:
        """The run's identity as a plain dict (goes into results.json and the report)."""
        d = asdict(self)
        d["experiments"] = list(self.experiments)
        d["depends_on"] = list(self.depends_on)
        return d


def parse_experiments(text: str | None) -> tuple[int, ...]:
    """``"1,3"`` -> ``(1, 3)``; an unknown number is a one-line error."""
    if text is None or str(text).strip() == "":
        return EXPERIMENTS
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in EXPERIMENTS:
            raise CxrtlError(f"unknown experiment {part!r}; choose from 1, 2, 3 (e.g. --experiments 1,3)")
        if int(part) not in out:
            out.append(int(part))
    return tuple(sorted(out))


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise CxrtlError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def _covid_runs() -> list[RunPlan]:
    runs = []
    for input_ in ("raw", "masked"):  # Exp. 1: Tables II and III
        for ch in (1, 3):
            runs.append(RunPlan(f"covid-{input_}-{ch}ch-wce-1cf", "covid", (1,), input=input_, channels=ch))
    for loss in ("ce", "wce-1cf", "wce-icf"):  # Exp. 2: Table IV
        runs.append(RunPlan(f"covid-raw-3ch-{loss}", "covid", (2,), loss=loss))
    # The paper's focal row: per-class alpha = the 1-CF weights, gamma = 3 (the authors' notebook).
    runs.append(
        RunPlan("covid-raw-3ch-focal", "covid", (2,), loss="focal", focal_gamma=3.0, focal_alpha="1cf")
    )
    return runs


def _pneumonia_runs() -> list[RunPlan]:
    """Exp. 3, Tables V and VI. The COVID fine-tune keeps the trained hidden layer, as the authors'
    best pneumonia run did; the COVID extractor gets a fresh head, as their other transfer runs did."""
    dep = ("covid-best",)
    return [
        RunPlan("pneumonia-none-finetune", "pneumonia", (3,), init="none", pretraining="None"),
        RunPlan("pneumonia-imagenet-finetune", "pneumonia", (3,)),
        RunPlan("pneumonia-imagenet-extractor", "pneumonia", (3,), scheme="extractor"),
        RunPlan(
            "pneumonia-covid-finetune",
            "pneumonia",
            (3,),
            init=COVID_BEST,
            keep_hidden=True,
            pretraining="ImageNet & COVID",
            depends_on=dep,
        ),
        RunPlan(
            "pneumonia-covid-extractor",
            "pneumonia",
            (3,),
            init=COVID_BEST,
            scheme="extractor",
            pretraining="ImageNet & COVID",
            depends_on=dep,
        ),
    ]


def _identity(run: RunPlan) -> tuple:
    """What makes two runs the same training job, whatever experiment asked for them."""
    d = run.to_config()
    for key in ("name", "experiments", "depends_on"):
        d.pop(key)
    return tuple(sorted(d.items()))


def plan_runs(experiments: tuple[int, ...]) -> list[RunPlan]:
    """The ordered, de-duplicated runs for ``experiments``.

    Exp. 3 needs the best Exp. 2 model, so asking for 3 alone still trains Exp. 2's runs (they are
    marked as Exp. 2 runs, and their tables are written too).
    """
    wanted = set(experiments)
    if 3 in wanted:
        wanted.add(2)
    merged: dict[tuple, RunPlan] = {}
    for run in _covid_runs() + _pneumonia_runs():
        if not wanted.intersection(run.experiments):
            continue
        key = _identity(run)
        if key in merged:  # same job: one run, listed under both experiments, keeps the first name
            first = merged[key]
            merged[key] = RunPlan(
                **{**asdict(first), "experiments": tuple(sorted(set(first.experiments + run.experiments)))}
            )
        else:
            merged[key] = run
    return list(merged.values())


def covid_best_candidates(runs: list[RunPlan]) -> list[RunPlan]:
    """The runs among which the COVID model for Exp. 3 is chosen: Exp. 2's loss comparison."""
    return [r for r in runs if r.dataset == "covid" and 2 in r.experiments]


# The comparisons the paper draws, as (experiment, a, b): the report states "a vs b" (a minus b).
COMPARISONS: tuple[tuple[int, str, str], ...] = (
    (1, "covid-masked-1ch-wce-1cf", "covid-raw-1ch-wce-1cf"),  # masked vs raw
    (1, "covid-masked-3ch-wce-1cf", "covid-raw-3ch-wce-1cf"),
    (1, "covid-raw-1ch-wce-1cf", "covid-raw-3ch-wce-1cf"),  # 1 vs 3 channels
    (1, "covid-masked-1ch-wce-1cf", "covid-masked-3ch-wce-1cf"),
    (2, "covid-raw-3ch-wce-1cf", "covid-raw-3ch-ce"),  # each loss vs CE
    (2, "covid-raw-3ch-wce-icf", "covid-raw-3ch-ce"),
    (2, "covid-raw-3ch-focal", "covid-raw-3ch-ce"),
    (3, "pneumonia-none-finetune", "pneumonia-imagenet-finetune"),  # each scheme vs ImageNet fine-tune
    (3, "pneumonia-imagenet-extractor", "pneumonia-imagenet-finetune"),
    (3, "pneumonia-covid-finetune", "pneumonia-imagenet-finetune"),
    (3, "pneumonia-covid-extractor", "pneumonia-imagenet-finetune"),
)
