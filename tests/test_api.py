"""The public Python API: `import cxrtl` is cheap and torch-free, names resolve, the quickstart runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_cxrtl_does_not_import_torch():
    done = _python(
        "import cxrtl, sys; assert 'torch' not in sys.modules, 'torch imported'; print(cxrtl.__version__)"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == __import__("cxrtl").__version__


def test_every_public_name_resolves_and_is_listed():
    import cxrtl

    assert set(cxrtl.__all__) == {"__version__", *cxrtl._EXPORTS}
    for name in cxrtl.__all__:
        assert getattr(cxrtl, name) is not None, name
    assert {
        "create_model",
        "TrainConfig",
        "train",
        "evaluate",
        "Predictor",
        "compute_metrics",
        "load_checkpoint",
        "load_dataset",
        "make_split",
        "reproduce",
    } <= set(dir(cxrtl))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cxrtl.nope  # noqa: B018


def test_package_ships_py_typed():
    import cxrtl

    assert (Path(cxrtl.__file__).parent / "py.typed").is_file()


def test_version_is_written_once():
    import cxrtl

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and cxrtl.__version__ not in pyproject


@pytest.mark.slow
def test_quickstart_example_runs_end_to_end(tmp_path):
    """examples/quickstart.py: synthesise, train 1 epoch at 32 px, evaluate, predict — public API only."""
    source = (ROOT / "examples" / "quickstart.py").read_text()
    assert "from cxrtl" not in source and "import cxrtl." not in source  # the public API only
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CXRTL_CACHE_DIR": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "2",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "best epoch 1" in out and "test accuracy" in out
    assert (tmp_path / "work" / "run" / "best.safetensors").is_file()
    # evaluate(out=None) wrote nothing beside the run; predictions name a real class
    assert not (tmp_path / "work" / "run" / "test").exists()
    assert any(f"-> {c}" in out for c in ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"))
