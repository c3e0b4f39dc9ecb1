"""Which data a run was trained on, and how data given to ``cxrtl evaluate`` relates to it.

:func:`data_root_of` finds the run's dataset; :func:`check_against_run_split` counts scored images a run
trained on (another split of its data); :func:`foreign` tells an external set (none of the run's files)
from the run's own data.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..errors import CxrtlError
from . import fitting

log = logging.getLogger(__name__)


def data_root_of(model_path: str | os.PathLike, data_root: str | os.PathLike | None) -> str:
    """``data_root`` if given, else the one the run (or checkpoint) was trained on, from its config."""
    if data_root is not None:
        return str(data_root)
    from ..checkpoint import read_meta

    path = Path(model_path).expanduser()
    cfg: dict[str, Any] = {}
    if path.is_dir() and (path / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    else:
        cfg = read_meta(path).get("config") or {}
    root = cfg.get("data") if isinstance(cfg, dict) else None
    if not root:
        raise CxrtlError(f"{path} does not record the dataset it was trained on; pass --data ROOT")
    # Runs now record absolute paths; an older run's relative root is tried from here, then from the run's
    # folder and its parents (where a project keeps its data beside its runs).
    base = path if path.is_dir() else path.parent
    candidates = [Path(root).expanduser()] + [b / root for b in (base, base.parent, base.parent.parent)]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise CxrtlError(
            f"the run's dataset {root} is not there any more (looked from here and from {base}); pass --data ROOT"
        )
    root = str(found)
    log.info("data root from the run's config: %s", root)
    return str(root)


def training_root(model_path) -> str | None:
    """The data root the run was trained on, or None when it is not recorded or not there any more."""
    try:
        return data_root_of(model_path, None)
    except CxrtlError:
        return None


def foreign(split_csv: Path | None, data_root) -> bool:
    """True when the run's split lists none of ``data_root``'s files: an external set, not the run's data."""
    from ..data import load_dataset
    from .external import split_fits

    trained_on = None if split_csv is None else training_root(split_csv.parent)
    if split_csv is None or (trained_on and Path(trained_on).resolve() == Path(data_root).resolve()):
        return False
    return not split_fits(split_csv, load_dataset(data_root))


def check_against_run_split(model_path, split_csv, records, data, subset, calibrate, positive, conformal):
    """A split other than the run's own: count the scored images the run trained on (warned, and recorded in
    ``metrics.json["trained_on"]``), and refuse to fit decision settings on images it trained on."""
    import csv

    run = Path(model_path).expanduser()
    own = run / "split.csv"
    if (
        not run.is_dir()
        or not own.is_file()
        or split_csv is None
        or Path(split_csv).resolve() == own.resolve()
    ):
        return None
    with open(own, newline="", encoding="utf-8") as fh:
        trained = {row["path"] for row in csv.DictReader(fh) if row.get("split") == "train"}
    n = sum(r.path in trained for r in records)
    if n:
        log.warning(
            "%d of the %d %s images of %s were training images of this run: their scores are optimistic",
            n,
            len(records),
            subset,
            split_csv,
        )
    fits = [name for name, on in (("--calibrate", calibrate), ("--positive", positive)) if on]
    fits += ["--conformal"] if conformal is not None else []
    fit_on = fitting.fit_subset(data)  # where the settings would be fitted: calibration, else validation
    leaked = sum(r.path in trained for r in data.split[fit_on])
    if fits and leaked:
        raise CxrtlError(
            f"{' and '.join(fits)} would be fitted on {leaked} {fitting.SUBSET_WORDS[fit_on]} image(s) of "
            f"{split_csv} that the run "
            "trained on, and stored with the model; fit them on the run's own split (leave --split out)"
        )
    return {"split": str(split_csv), "subset": subset, "n": len(records), "trained_on": n}
