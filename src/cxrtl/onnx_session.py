"""onnxruntime sessions, tuned for CPU latency: the one place cxrtl opens an ONNX file to run it.

Used by the classifier's ONNX backend (:mod:`cxrtl.inference.backends`) and the segmenter's
(:mod:`cxrtl.segmentation.runtime`); never imports torch.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CxrtlError


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CxrtlError(
            "running ONNX models needs onnxruntime; install it with `pip install 'cxrtl[onnx]'`"
        ) from None
    return onnxruntime


def session_options(threads: int | None = None):
    """onnxruntime settings tuned for CPU latency: full graph optimisation, one thread per physical core,
    no spin-waiting.

    ORT_ENABLE_ALL folds constants and fuses Conv+BatchNorm(+ReLU) and layouts (NCHWc); threads that
    spin-wait between runs steal cores from image decoding and from other processes on a shared machine
    (interleaved A/B on the busy 2-core dev box, DenseNet-121 at 224: 272 vs 364 ms median in one run,
    155 vs 155 ms in another; never worse).
    """
    ort = _onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else 0  # 0: onnxruntime uses the physical cores
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only
    return so


def open_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` with :func:`session_options`; one-line errors for bad files."""
    ort = _onnxruntime()
    if not path.is_file():
        raise CxrtlError(f"ONNX file {path} does not exist")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own types for invalid files)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CxrtlError(
            f"{path} is not a loadable ONNX model ({first}); export it again with `cxrtl export`"
        ) from None
    return session
