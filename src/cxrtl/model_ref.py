"""Naming a model: one place turns what a user types as MODEL into the files cxrtl will load.

A MODEL is a run directory (``cxrtl train --out``), a bundle (``cxrtl export --bundle``), a checkpoint
(``.safetensors``, or its ``.json``), an ONNX export (``.onnx``), or ``hf://OWNER/NAME[@REVISION]`` (a bundle on
the Hugging Face Hub, or in its local cache). :func:`resolve_model` resolves any of them to a
:class:`ModelRef`; a bundle's files are verified against its manifest on the way. Every command and
:class:`cxrtl.Predictor` resolve through here, so one reference means one thing everywhere.

No torch here: the ONNX path resolves its models too.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from .bundle_manifest import (
    SEGMENTER_FILE,
    SEGMENTER_ONNX,
    is_bundle,
    require_listed,
    verified_bundle,
    verify_bundle,
)
from .errors import CxrtlError

KINDS = ("run", "bundle", "checkpoint", "onnx")
WHAT_A_MODEL_IS = (
    "a MODEL is a run directory, a bundle, a .safetensors checkpoint, an .onnx export or hf://OWNER/NAME"
)


@dataclass(frozen=True)
class ModelRef:
    """A resolved MODEL: its kind and local files. ``bundle`` is the verified bundle folder, if it is one."""

    given: str
    kind: str  # one of KINDS
    path: Path  # the folder (run, bundle) or the file (checkpoint, onnx)
    bundle: Path | None = None

    @property
    def folder(self) -> Path:
        """The folder the model's files live in."""
        return self.path if self.path.is_dir() else self.path.parent

    @property
    def weights(self) -> Path | None:
        """The PyTorch weights (``.safetensors``), or None for a bare ONNX file."""
        if self.kind in ("run", "bundle"):
            return self.path / "best.safetensors"
        if self.kind == "checkpoint":
            return self.path
        return None

    @property
    def onnx(self) -> Path | None:
        """The ONNX export: the file itself, or a bundle's ``model.onnx``."""
        if self.kind == "onnx":
            return self.path
        if self.bundle is not None and (self.bundle / "model.onnx").is_file():
            return self.bundle / "model.onnx"
        return None

    def bundled(self, name: str) -> Path | None:
        """A verified file of the bundle this model is in (e.g. ``segmenter.onnx``), or None."""
        if self.bundle is None or not (self.bundle / name).is_file():
            return None
        return self.bundle / name

    @property
    def segmenter(self) -> Path | None:
        """The lung segmenter a bundle carries (torch weights), or None."""
        return self.bundled(SEGMENTER_FILE)

    @property
    def segmenter_onnx(self) -> Path | None:
        """The lung segmenter a bundle carries as ONNX, or None."""
        return self.bundled(SEGMENTER_ONNX)

    def require_weights(self) -> Path:
        """The PyTorch weights, or a one-line error for an ONNX-only model."""
        if self.weights is None:
            raise CxrtlError(
                f"{self.given} is an ONNX export; this needs the PyTorch checkpoint (a run directory, bundle "
                "or .safetensors file)"
            )
        return self.weights


def resolve_model(ref: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ModelRef:
    """Resolve a MODEL reference (see the module doc) to its local files; one-line errors otherwise."""
    from .hub import is_hub_ref, parse_ref

    given = str(ref)
    if is_hub_ref(given):
        from .hub import download

        path = download(given, cache_dir)
    else:
        if given.lower().startswith("hf:"):
            parse_ref(given)  # "hf:/x" or "HF://x": the malformed-reference error, not "no such file"
        path = Path(ref).expanduser()
    if not path.exists():
        raise CxrtlError(_missing(path))
    if path.is_dir():
        return _folder(given, path)
    suffix = path.suffix.lower()
    if path.name.endswith(".decisions.json"):
        raise CxrtlError(
            f"{path} is a model's decision record, not the model; give its .safetensors or folder"
        )
    if suffix == ".json":
        path = path.with_suffix(".safetensors")
        if not path.is_file():
            raise CxrtlError(f"{path} does not exist beside its .json; give the checkpoint's .safetensors")
        suffix = ".safetensors"
    kind = "onnx" if suffix == ".onnx" else "checkpoint"
    bundle = path.parent if is_bundle(path.parent) else None
    if bundle is not None:  # a file inside a bundle is loaded only when listed and unchanged
        verify_bundle(bundle, only=path.name)
        if kind == "checkpoint":
            _verify_checkpoint_files(bundle)
    return ModelRef(given, kind, path, bundle)


@overload
def local_path(ref: str) -> str: ...
@overload
def local_path(ref: None) -> None: ...
def local_path(ref: str | None) -> str | None:
    """For options that keep a string (``train --init``, ``evaluate MODEL``): an ``hf://`` reference becomes
    its local (downloaded or cached, verified) folder; anything else is returned as given."""
    from .hub import is_hub_ref

    return str(resolve_model(ref).path) if ref is not None and is_hub_ref(ref) else ref


def _folder(given: str, path: Path) -> ModelRef:
    if is_bundle(path):
        _verify_checkpoint_files(path)
        return ModelRef(given, "bundle", path, path)
    if (path / "best.safetensors").is_file():
        return ModelRef(given, "run", path)
    hint = ""
    if (path / "model.onnx").is_file():
        hint = f" (it holds model.onnx: give {path / 'model.onnx'})"
    raise CxrtlError(
        f"{path} is not a cxrtl run directory or bundle (no best.safetensors){hint}; {WHAT_A_MODEL_IS}"
    )


def _verify_checkpoint_files(bundle: Path) -> None:
    """Every file of the bundle verified, and the checkpoint's files listed (nothing unlisted is loaded)."""
    meta = verified_bundle(bundle)
    require_listed(bundle, meta, ["best.safetensors"])


def _missing(path: Path) -> str:
    """ "MODEL does not exist" with the closest name beside it, and what a MODEL can be."""
    parent = path.parent if str(path.parent) else Path(".")
    close: list[str] = []
    if parent.is_dir():
        names = [p.name for p in parent.iterdir() if not p.name.startswith(".")]
        close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    hint = f"did you mean {parent / close[0]}? " if close else ""
    return f"model {path} does not exist; {hint}{WHAT_A_MODEL_IS}"
