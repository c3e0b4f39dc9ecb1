"""A model's decision settings: everything it decides with beyond its weights, in one typed record.

After ``cxrtl evaluate`` a trained model also carries a temperature (calibration), an operating point
(a threshold on one class's probability), a conformal threshold (prediction sets) and, for a model trained
on lung-masked images, the segmenter that draws its masks. :class:`Decisions` holds them, with the classes
and preprocessing they apply to; each fitted part says which subset it was fitted on, on how many images,
and when.

One file, one reader, one writer: the record lives in ``<stem>.decisions.json`` beside ``<stem>.safetensors``,
written only by :func:`write_decisions` (atomically) and read only by :func:`read_decisions`. Whoever runs
the model, torch or onnxruntime, applies it with :meth:`Decisions.decide`, so both backends give the same
rows. An ONNX export embeds the same record in its metadata (:meth:`Decisions.to_json`), a bundle copies the
file, and the card, ``/v1/model`` and the report read it.

Runs written before this record kept three sidecars (``<stem>.calibration.json``,
``<stem>.operating_point.json``, ``<stem>.conformal.json``); :func:`read_decisions` still reads them, and
:func:`migrate` folds them into the one file. This module is numpy-only: the ONNX path uses it without torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CxrtlError
from .fsutil import read_json, write_json
from .guard import OOD_LAYERS, OutOfDistribution  # noqa: F401  (the record's OOD part, re-exported)

log = logging.getLogger(__name__)

FORMAT = "cxrtl-decisions"
VERSION = 1
SUFFIX = ".decisions.json"
LEGACY_SUFFIXES = (".calibration.json", ".operating_point.json", ".conformal.json")
_TOL = 1e-9  # two temperatures closer than this are the same temperature


def now_utc() -> str:
    """The time stamp every fitted part carries: ISO 8601, UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------- the parts
@dataclass(frozen=True)
class Temperature:
    """Temperature scaling: probabilities are ``softmax(logits / value)``."""

    value: float
    fitted_on: str = "val"
    n: int | None = None
    fitted_utc: str | None = None
    nll_before: float | None = None  # validation NLL at temperature 1 and at ``value``
    nll_after: float | None = None


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on P(``positive``): a row is flagged when P(positive) >= ``threshold``.

    ``threshold`` applies to probabilities at ``temperature`` (the one in use when it was chosen).
    """

    positive: str
    threshold: float
    temperature: float = 1.0
    method: str = "target sensitivity"
    target_sensitivity: float | None = None
    fitted_on: str = "val"
    n: int | None = None
    n_positive: int | None = None
    fitted_utc: str | None = None
    warning: str | None = None


EMPTY_SET = "(empty)"  # an empty conformal set in CSV and table output: no class is plausible (JSON: [])


@dataclass(frozen=True)
class Conformal:
    """Split-conformal (LAC) prediction sets at coverage ``1 - alpha``, fitted at ``temperature``.

    Class j is in a row's set when ``1 - p_j <= threshold`` (or that class's own threshold in
    ``class_thresholds``, for class-conditional sets).
    """

    alpha: float
    threshold: float
    method: str = "lac"
    temperature: float = 1.0
    fitted_on: str = "val"
    n: int | None = None
    class_thresholds: dict[str, float] | None = None
    fitted_utc: str | None = None


@dataclass(frozen=True)
class SegmenterRef:
    """The lung segmenter a masked-input model needs: a file name (in a bundle) or a run folder, and its hash."""

    name: str
    sha256: str | None = None
    onnx: str | None = None  # the segmenter's ONNX export beside the model, when there is one


@dataclass(frozen=True)
class Decisions:
    """What a model decides with beyond its weights. Absent parts are None (never fitted)."""

    classes: tuple[str, ...]
    preprocess: dict[str, Any] = field(default_factory=dict)
    temperature: Temperature | None = None
    operating_point: OperatingPoint | None = None
    conformal: Conformal | None = None
    segmenter: SegmenterRef | None = None
    weights_sha256: str | None = None  # the weights this record was fitted for
    ood: OutOfDistribution | None = None  # the out-of-distribution guard (runs trained before it have none)

    # ------------------------------------------------------------------------ what prediction uses
    @property
    def t(self) -> float:
        """The temperature prediction applies (1 without calibration)."""
        return self.temperature.value if self.temperature else 1.0

    @property
    def usable_conformal(self) -> Conformal | None:
        """The conformal threshold, or None when it was fitted at another temperature (no guarantee then)."""
        c = self.conformal
        return c if c is not None and abs(c.temperature - self.t) <= _TOL else None

    def stale_notes(self) -> list[str]:
        """Why a stored part will not be applied as fitted: fitted at another temperature than the model's now."""
        notes = []
        op, c = self.operating_point, self.conformal
        if op is not None and abs(op.temperature - self.t) > _TOL:
            notes.append(
                f"the stored {op.positive} threshold was chosen at temperature {op.temperature:g}, but the "
                f"model now uses {self.t:g}; choose it again with cxrtl evaluate --positive"
            )
        if c is not None and self.usable_conformal is None:
            notes.append(
                f"the conformal threshold was fitted at temperature {c.temperature:g}, the model now uses "
                f"{self.t:g}; no prediction sets until `cxrtl evaluate --conformal ALPHA` refits it"
            )
        return notes

    def positive_flag(self, probs_row: Sequence[float] | np.ndarray) -> dict[str, Any] | None:
        """``{"class", "threshold", "flag"}`` for one probability row, or None without an operating point."""
        op = self.operating_point
        if op is None:
            return None
        p = float(probs_row[self.classes.index(op.positive)])
        return {"class": op.positive, "threshold": float(op.threshold), "flag": bool(p >= op.threshold)}

    def prediction_set(self, probs_row: Sequence[float] | np.ndarray) -> list[str] | None:
        """The class names in one row's conformal set, or None when there is no usable threshold.

        An empty list is a real answer: no class is plausible at this coverage (look at the image).
        """
        c = self.usable_conformal
        if c is None:
            return None
        p = np.asarray(probs_row, dtype=np.float64)
        limits = np.array(
            [(c.class_thresholds or {}).get(name, c.threshold) for name in self.classes], dtype=np.float64
        )
        return [name for name, ok in zip(self.classes, (1.0 - p) <= limits + 1e-12) if ok]

    def ood_flag(self, score: float | None) -> dict[str, Any] | None:
        """``{"score", "threshold", "flag"}`` for one image's OOD score, or None without a guard (or score)."""
        if self.ood is None or score is None:
            return None
        return self.ood.flag(score)

    def decide(
        self, probs_row: Sequence[float] | np.ndarray, ood_score: float | None = None
    ) -> dict[str, Any]:
        """The decision fields of one prediction row: ``positive``, ``prediction_set`` and ``ood`` where carried."""
        out: dict[str, Any] = {}
        ood = self.ood_flag(ood_score)
        if ood is not None:
            out["ood"] = ood
        flag = self.positive_flag(probs_row)
        if flag is not None:
            out["positive"] = flag
        members = self.prediction_set(probs_row)
        if members is not None:
            out["prediction_set"] = members
        return out

    # ------------------------------------------------------------------------------ changing it
    def replace(self, **changes: Any) -> Decisions:
        """A copy with some parts replaced (the record is immutable)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------ serialising
    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"format", "version", "classes", "preprocess", "temperature", ...}``."""
        body = dataclasses.asdict(self)
        body["classes"] = list(self.classes)
        return {"format": FORMAT, "version": VERSION, **body}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the model's decision record") -> Decisions:
        """The record from its JSON form, each part checked; a one-line error naming ``where`` otherwise."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CxrtlError(f"{where} is not a cxrtl decision record; evaluate the model again")
        version = data.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= VERSION:
            raise CxrtlError(
                f"{where} is of version {version!r}, this cxrtl reads 1..{VERSION}; upgrade cxrtl"
            )
        classes = data.get("classes")
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise CxrtlError(f"{where} has no list of classes; evaluate the model again")
        try:
            record = cls(
                classes=tuple(classes),
                preprocess=dict(data.get("preprocess") or {}),
                temperature=_part(Temperature, data.get("temperature")),
                operating_point=_part(OperatingPoint, data.get("operating_point")),
                conformal=_part(Conformal, data.get("conformal")),
                segmenter=_part(SegmenterRef, data.get("segmenter")),
                weights_sha256=data.get("weights_sha256"),
                ood=_part(OutOfDistribution, data.get("ood")),
            )
        except (TypeError, ValueError) as exc:
            raise CxrtlError(f"{where} is damaged ({exc}); delete it and evaluate the model again") from None
        return record.checked(where)

    @classmethod
    def from_json(cls, text: str, where: str = "the model's decision record") -> Decisions:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise CxrtlError(f"{where} is not valid JSON; export the model again") from None
        return cls.from_dict(data, where)

    def checked(self, where: str) -> Decisions:
        """This record, after checking each value's range and that named classes are the model's."""
        t = self.temperature
        if t is not None and not (_finite(t.value) and t.value > 0):
            raise CxrtlError(
                f"{where} has no valid positive temperature; delete it or recalibrate with "
                "cxrtl evaluate --calibrate"
            )
        op = self.operating_point
        if op is not None:
            if not (_finite(op.threshold) and 0 <= op.threshold <= 1) or not op.positive:
                raise CxrtlError(
                    f"{where} has no valid 'positive' class and 'threshold' in [0, 1]; choose it again "
                    "with cxrtl evaluate --positive CLASS"
                )
            if op.positive not in self.classes:
                raise CxrtlError(
                    f"{where}: the operating point is for class {op.positive!r}, not one of "
                    f"{list(self.classes)}; choose it again with cxrtl evaluate --positive CLASS"
                )
        c = self.conformal
        if c is not None:
            limits = [c.threshold, *(c.class_thresholds or {}).values()]
            if not all(_finite(v) and 0 <= v <= 1 for v in limits):
                raise CxrtlError(
                    f"{where} has no valid conformal 'threshold' in [0, 1]; refit it with "
                    "cxrtl evaluate --conformal ALPHA"
                )
            if not (_finite(c.alpha) and 0 < c.alpha < 1):
                raise CxrtlError(f"{where} has a conformal alpha outside (0, 1); refit it")
        if self.ood is not None:
            self.ood.check(len(self.classes), where)
        return self

    # ------------------------------------------------------------------------------ for people
    def summary(self) -> dict[str, Any]:
        """A short JSON-ready view for ``/v1/model`` and logs: what is fitted, on what, when."""
        out: dict[str, Any] = {
            "temperature": self.temperature.value if self.temperature else None,
            "operating_point": None,
            "conformal": None,
            "segmenter": self.segmenter.name if self.segmenter else None,
            "ood": None,
        }
        if self.ood:
            g = self.ood
            out["ood"] = {
                "layer": g.layer,
                "threshold": g.threshold,
                "percentile": g.percentile,
                "fitted_on": g.fitted_on,
                "n": g.n,
                "fitted_utc": g.fitted_utc,
            }
        if self.operating_point:
            op = self.operating_point
            out["operating_point"] = {
                "class": op.positive,
                "threshold": op.threshold,
                "target_sensitivity": op.target_sensitivity,
                "fitted_on": op.fitted_on,
                "fitted_utc": op.fitted_utc,
            }
        if self.conformal:
            c = self.conformal
            out["conformal"] = {
                "alpha": c.alpha,
                "coverage": 1 - c.alpha,
                "threshold": c.threshold,
                "method": c.method,
                "by_class": c.class_thresholds is not None,
                "fitted_on": c.fitted_on,
                "fitted_utc": c.fitted_utc,
                "in_use": self.usable_conformal is not None,
            }
        return out


def _finite(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and np.isfinite(v)


def _part(kind: type, data: Any):
    """One part of the record from its dict (unknown keys ignored, so newer minor fields do not break)."""
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise TypeError(f"{kind.__name__} should be an object, not {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: v for k, v in data.items() if k in names})


# ------------------------------------------------------------------------------------ files on disk
def decisions_path(weights: str | os.PathLike) -> Path:
    """``<stem>.decisions.json`` beside ``<stem>.safetensors`` (another name keeps its whole stem)."""
    w = Path(weights)
    return w.with_name(w.name.removesuffix(".safetensors") + SUFFIX)


def _legacy_path(weights: Path, suffix: str) -> Path:
    return weights.with_name(weights.name.removesuffix(".safetensors") + suffix)


def read_decisions(weights: str | os.PathLike, meta: Mapping[str, Any]) -> Decisions:
    """The decision record of the checkpoint ``weights`` whose metadata is ``meta``; the one reader.

    Reads ``<stem>.decisions.json``; without it, the three sidecars older runs kept; without those, a record
    with nothing fitted. A record fitted for other weights (the run was retrained in place) is ignored with a
    warning: its thresholds belong to another model.
    """
    weights = Path(weights)
    classes = tuple(str(c) for c in meta["classes"])
    preprocess = dict(meta.get("preprocess") or {})
    path = decisions_path(weights)
    if path.is_file():
        record = Decisions.from_dict(read_json(path, "decision record"), str(path))
        if record.classes != classes:
            raise CxrtlError(
                f"{path} is for classes {list(record.classes)}, the checkpoint has {list(classes)}; "
                "delete it and evaluate the model again"
            )
        want = meta.get("weights_sha256")
        if record.weights_sha256 and want and record.weights_sha256 != want:
            log.warning(
                "%s was fitted for other weights (the run was retrained since); ignoring it until "
                "`cxrtl evaluate` fits it again",
                path,
            )
            return Decisions(classes, preprocess, weights_sha256=want)
        return record.replace(preprocess=preprocess)
    return _read_legacy(weights, classes, preprocess, meta.get("weights_sha256"))


def _read_legacy(weights: Path, classes: tuple[str, ...], preprocess: dict, sha: str | None) -> Decisions:
    """A record from the three sidecars of runs written before ``decisions.json`` (each optional)."""
    cal, op, conf = (_read_optional(_legacy_path(weights, s)) for s in LEGACY_SUFFIXES)
    where = f"the decision files beside {weights.name}"
    temperature = operating_point = conformal = None
    if cal is not None:
        temperature = Temperature(
            value=_number(cal.get("temperature"), f"{_legacy_path(weights, LEGACY_SUFFIXES[0])}"),
            fitted_on=str(cal.get("fitted_on", "val")),
            n=cal.get("n"),
            nll_before=cal.get("val_nll_before"),
            nll_after=cal.get("val_nll_after"),
        )
    if op is not None:
        operating_point = OperatingPoint(
            positive=str(op.get("positive") or ""),
            threshold=_number(op.get("threshold"), str(_legacy_path(weights, LEGACY_SUFFIXES[1]))),
            temperature=float(op.get("temperature", 1.0)),
            target_sensitivity=op.get("target_sensitivity"),
            fitted_on=str(op.get("chosen_on", "val")),
            n_positive=op.get("val_positives"),
            warning=op.get("warning"),
        )
    if conf is not None:
        conformal = Conformal(
            alpha=float(conf.get("alpha", 0.1)),
            threshold=_number(conf.get("threshold"), str(_legacy_path(weights, LEGACY_SUFFIXES[2]))),
            method=str(conf.get("method", "lac")),
            temperature=float(conf.get("temperature") or 1.0),
            fitted_on=str(conf.get("fitted_on", "val")),
            n=conf.get("n"),
        )
    record = Decisions(classes, preprocess, temperature, operating_point, conformal, weights_sha256=sha)
    return record.checked(where)


def _read_optional(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = read_json(path, "decision file")
    if not isinstance(data, dict):
        raise CxrtlError(f"{path} is not a JSON object; delete it and evaluate the model again")
    return data


def _number(v: Any, where: str) -> float:
    if not _finite(v):
        raise CxrtlError(f"{where} has no valid number where one is needed; delete it and evaluate again")
    return float(v)


def write_decisions(weights: str | os.PathLike, record: Decisions) -> Path:
    """Write the record beside ``weights`` atomically, and retire the older sidecars it replaces; the one writer."""
    weights = Path(weights)
    path = write_json(decisions_path(weights), record.checked("the decision record").to_dict())
    for suffix in LEGACY_SUFFIXES:  # the record now holds what they held
        _legacy_path(weights, suffix).unlink(missing_ok=True)
    return path


def migrate(weights: str | os.PathLike, meta: Mapping[str, Any]) -> tuple[Path, bool]:
    """Fold an older run's sidecars into ``decisions.json`` -> (path, whether anything was written)."""
    weights = Path(weights)
    if decisions_path(weights).is_file():
        return decisions_path(weights), False
    if not any(_legacy_path(weights, s).is_file() for s in LEGACY_SUFFIXES):
        return decisions_path(weights), False
    return write_decisions(weights, read_decisions(weights, meta)), True


def record_files(weights: str | os.PathLike) -> list[Path]:
    """The decision files present beside ``weights`` (the record, or the older sidecars): what a bundle copies."""
    weights = Path(weights)
    candidates = [decisions_path(weights)] + [_legacy_path(weights, s) for s in LEGACY_SUFFIXES]
    return [p for p in candidates if p.is_file()]
