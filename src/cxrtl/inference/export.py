"""ONNX export of a cxrtl checkpoint: a self-describing graph, verified against PyTorch.

The exported graph takes what :func:`cxrtl.data.image_io.prepare_image` makes: uint8 grey images
``[N, 1, S, S]`` (N dynamic). Scaling, pseudo-RGB expansion and ImageNet normalisation happen inside the
graph, so an ONNX user needs only Pillow/numpy. Outputs: ``logits`` and ``probabilities`` (softmax of
logits / temperature), and for a model with an out-of-distribution guard ``ood_score`` (the guard's
Mahalanobis score, :mod:`cxrtl.evaluation.ood`; flag when above the record's threshold). Classes,
preprocessing, backbone and the model's whole decision record (:mod:`cxrtl.decisions`: temperature,
operating point, conformal threshold, OOD guard, segmenter) travel as
``metadata_props``, so onnxruntime gives the same rows as torch.
The export needs torch (imported lazily); running the file is :mod:`cxrtl.inference.backends`' job.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import CxrtlError
from .backends import (
    INPUT_NAME,
    KEY_PREFIX,
    ONNX_FORMAT,
    ONNX_VERSION,
    OOD_OUTPUT,
    OUTPUT_NAMES,
    load_onnx,
)

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
DEFAULT_OPSET = 18


def _deployable(net, pp, head):
    """``net`` with uint8 input scaling and normalisation in front (as the training loop normalises) and
    ``head(outputs)`` behind: the module an export traces."""
    import torch

    class _Deployable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = net
            self.channels = pp.channels
            self.register_buffer("mean", torch.tensor(pp.mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(pp.std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, image):
            # Same arithmetic as cxrtl.data.preprocess.normalize_batch, so both paths agree to rounding.
            x = image.float() / 255.0
            if self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            return head(self.model((x - self.mean) / self.std))

    return _Deployable().eval()


def _wrap_for_export(model, pp, temperature: float | None, guard=None):
    """The CxrModel with input scaling/normalisation in front and temperature softmax behind; with an OOD
    ``guard`` (decisions.OutOfDistribution) a third output, the guard's score of each image's features."""
    import torch

    inv_t = 1.0 / (temperature or 1.0)
    if guard is None:
        return _deployable(model, pp, lambda logits: (logits, torch.softmax(logits * inv_t, dim=1)))
    from ..evaluation.ood import features_of, guard_module

    class _Scored(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.guard = guard_module(guard)

        def forward(self, x):
            logits, feats = features_of(self.model, x, guard.layer)
            return logits, self.guard(feats)

    return _deployable(_Scored(), pp, lambda out: (out[0], torch.softmax(out[0] * inv_t, dim=1), out[1]))


def _export_graph(
    module,
    example,
    path: Path,
    exporter: str,
    opset: int,
    inputs: tuple[str, ...] = (INPUT_NAME,),
    outputs: tuple[str, ...] = OUTPUT_NAMES,
) -> None:
    """torch.onnx.export with a dynamic batch dimension, torch's chatter routed to the debug log."""
    import torch

    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), torch.no_grad():
        if exporter == "dynamo":
            from torch.export import Dim

            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=list(inputs),
                output_names=list(outputs),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                dynamic_shapes={"image": {0: Dim("batch", min=1, max=65536)}},
            )
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    input_names=list(inputs),
                    output_names=list(outputs),
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                    dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
                )
    if chatter.getvalue().strip():
        log.debug("torch.onnx.export (%s) said:\n%s", exporter, chatter.getvalue())


def export_onnx(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    exporter: str = "auto",
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    label: str | None = None,
) -> Path:
    """Export a cxrtl checkpoint (run dir, .safetensors or .json) to a self-describing ONNX file.

    ``label``: what the log calls the result (a bundle being built names itself, not its staging folder).

    Args:
        exporter: "dynamo" (torch.export based), "torchscript" (legacy), or "auto": dynamo, falling
            back to torchscript if dynamo fails on this backbone.
        verify: run the exported file under onnxruntime at batch 1 and 3 and compare with PyTorch.
    """
    import torch

    from ..checkpoint import checkpoint_preprocess, load_checkpoint, resolve_checkpoint
    from ..decisions import read_decisions
    from ..fsutil import write_bytes

    if exporter not in EXPORTERS:
        raise CxrtlError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise CxrtlError(f"ONNX output {out} should end in .onnx; e.g. --onnx model.onnx")
    weights = resolve_checkpoint(model_path)
    model, meta = load_checkpoint(weights)
    model.eval()
    pp = checkpoint_preprocess(model, meta, weights)
    decisions = read_decisions(weights, meta)
    temperature = decisions.temperature.value if decisions.temperature else None
    module = _wrap_for_export(model, pp, temperature, decisions.ood)
    outputs = OUTPUT_NAMES + ((OOD_OUTPUT,) if decisions.ood is not None else ())
    example = torch.randint(
        0,
        256,
        (2, 1, pp.image_size, pp.image_size),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    proto, used = _export_with_fallback(module, example, exporter, opset, meta["backbone"], outputs=outputs)
    props = {
        "format": ONNX_FORMAT,
        "version": str(ONNX_VERSION),
        "cxrtl_version": __version__,
        "classes": json.dumps(list(model.classes)),
        "preprocess": json.dumps(pp.to_dict()),
        "backbone": str(meta["backbone"]),
        "in_chans": str(model.in_chans),
        "temperature": json.dumps(temperature),
        "decisions": decisions.to_json(),  # operating point, conformal sets, OOD guard, segmenter: as under torch
        "exporter": used,
        "input": f"{INPUT_NAME}: uint8 grey [N,1,{pp.image_size},{pp.image_size}] from prepare_image; "
        "scaling and normalisation are inside the graph",
        "source_checkpoint": weights.name,
    }
    _describe(
        proto,
        props,
        f"cxrtl {meta['backbone']} chest-radiograph classifier; classes "
        f"{', '.join(model.classes)}. Research tool, not a medical device.",
    )
    write_bytes(out, proto.SerializeToString())
    log.info("exported %s with the %s exporter", label or f"{weights} to {out}", used)
    if verify:
        _verify(out, module, pp, decisions.ood is not None)
    return out


def _export_with_fallback(
    module,
    example,
    exporter: str,
    opset: int,
    backbone: str,
    inputs: tuple[str, ...] = (INPUT_NAME,),
    outputs: tuple[str, ...] = OUTPUT_NAMES,
):
    """Export to an ONNX proto with ``exporter`` ("auto": dynamo, then torchscript) -> (proto, name used)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="cxrtl-export-") as tmp:
        graph = Path(tmp) / "model.onnx"
        tried = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
        for i, name in enumerate(tried):
            try:
                _export_graph(module, example, graph, name, opset, inputs, outputs)
            except Exception as exc:  # noqa: BLE001  (exporters raise many types; fall back or report)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                if i + 1 < len(tried):
                    log.warning(
                        "dynamo ONNX export failed (%s); falling back to the TorchScript exporter", first
                    )
                    continue
                raise CxrtlError(
                    f"ONNX export of {backbone} failed with the {name} exporter "
                    f"({first}); try --exporter "
                    f"{'torchscript' if name == 'dynamo' else 'dynamo'}"
                ) from None
            return onnx.load(str(graph)), name
    raise AssertionError("unreachable: the last exporter either returns or raises")


def _describe(proto, props: dict[str, str], doc: str) -> None:
    """Replace the proto's metadata with ``props`` (keys prefixed ``cxrtl.``) and set producer and doc."""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = KEY_PREFIX + key, value
    proto.producer_name, proto.producer_version = "cxrtl", __version__
    proto.doc_string = doc


def _verify(path: Path, module, pp, ood: bool = False) -> None:
    """The exported file must reproduce PyTorch's logits (and OOD scores) at batch 1 and 3 (dynamic batch)."""
    import torch

    backend, _ = load_onnx(path)
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randint(0, 256, (batch, 1, pp.image_size, pp.image_size), dtype=torch.uint8, generator=gen)
        with torch.inference_mode():
            outs = module(x)
        want = outs[0].float().numpy()
        got = backend.logits(x.numpy())
        err = float(np.abs(got - want).max())
        if not np.isfinite(err) or err > 1e-3 * max(1.0, float(np.abs(want).max())):
            path.unlink(missing_ok=True)
            raise CxrtlError(
                f"exported ONNX disagrees with PyTorch at batch {batch} (max logit error "
                f"{err:.2g}); try the other --exporter"
            )
        if ood:
            want_s = outs[2].double().numpy()
            got_s = backend.session.run([OOD_OUTPUT], {INPUT_NAME: x.numpy()})[0]
            rel = float(np.max(np.abs(got_s - want_s) / np.maximum(1.0, np.abs(want_s))))
            if not np.isfinite(rel) or rel > 1e-3:
                path.unlink(missing_ok=True)
                raise CxrtlError(
                    f"exported ONNX's OOD score disagrees with PyTorch at batch {batch} (relative error "
                    f"{rel:.2g}); try the other --exporter"
                )
    log.debug("verified %s against PyTorch at batch 1 and 3", path)


# ------------------------------------------------------------------------------------------- segmenter
def export_segmenter(
    segmenter: str | os.PathLike, out: str | os.PathLike, exporter: str = "auto", opset: int = DEFAULT_OPSET
) -> Path:
    """Export a ``cxrtl segment train`` run to ONNX: uint8 grey ``[N, 1, S, S]`` -> lung probability map.

    Normalisation and the sigmoid are inside the graph; :class:`cxrtl.segmentation.runtime.OnnxSegmenter`
    resizes and thresholds around it exactly as the PyTorch segmenter does. Verified against PyTorch.
    """
    import torch

    from ..data.preprocess import Preprocess
    from ..fsutil import sha256_file, write_bytes
    from ..segmentation.model import load_segmenter, resolve_segmenter
    from ..segmentation.runtime import SEG_INPUT, SEG_ONNX_FORMAT, SEG_ONNX_VERSION, SEG_OUTPUT

    weights = resolve_segmenter(segmenter)
    model, meta = load_segmenter(weights, "cpu")
    size, chans = int(meta["image_size"]), int(meta["in_chans"])
    pp = Preprocess("raw", chans, size)

    module = _deployable(model, pp, torch.sigmoid)
    example = torch.randint(
        0, 256, (2, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    proto, used = _export_with_fallback(
        module, example, exporter, opset, str(meta.get("encoder")), (SEG_INPUT,), (SEG_OUTPUT,)
    )
    info = {k: meta[k] for k in ("image_size", "in_chans", "encoder") if k in meta}
    props = {
        "format": SEG_ONNX_FORMAT,
        "version": str(SEG_ONNX_VERSION),
        "cxrtl_version": __version__,
        "segmenter": json.dumps({**info, "source_sha256": sha256_file(weights)}),
        "exporter": used,
    }
    _describe(proto, props, "cxrtl lung segmenter (U-Net). Research tool, not a medical device.")
    out = Path(out)
    write_bytes(out, proto.SerializeToString())
    _verify_segmenter(out, module, size)
    log.info("exported the lung segmenter to %s with the %s exporter", out.name, used)
    return out


def _verify_segmenter(path: Path, module, size: int) -> None:
    import torch

    from ..onnx_session import open_session
    from ..segmentation.runtime import SEG_INPUT, SEG_OUTPUT

    session = open_session(path)
    x = torch.randint(
        0, 256, (3, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        want = module(x).numpy()
    got = session.run([SEG_OUTPUT], {SEG_INPUT: x.numpy()})[0]
    err = float(np.abs(got - want).max())
    if not np.isfinite(err) or err > 1e-3:
        path.unlink(missing_ok=True)
        raise CxrtlError(
            f"the segmenter's ONNX export disagrees with PyTorch (max error {err:.2g}); try --exporter"
        )
