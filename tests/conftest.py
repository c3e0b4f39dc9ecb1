"""Shared fixtures: an isolated cache/offline environment for every test, and tiny synthetic datasets.

Session fixtures (build once, treat as read-only; copy with ``covid_copy`` before modifying):
``synth_out`` (folder holding both sets), ``synth_roots`` -> (covid_root, pneumonia_root),
``covid_root``, ``pneumonia_root``, ``synth_root`` (= covid_root). ``tiny_pp``: a 32-px Preprocess.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

# Small enough to build in about a second, big enough for every class to reach train, val and test.
SYNTH_KW = {
    "count": 60,
    "seed": 0,
    "kermany_count": 40,
    "image_size": 96,
    "mask_size": 80,
    "kermany_size": (64, 112),
}


# Before any test module imports timm (and with it huggingface_hub, which reads this once): no network.
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped on a machine without CUDA."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch, request):
    """Every test gets its own cache folder and never touches the network or ~/.cache.

    ``--device auto`` means the CPU (CXRTL_DEVICE=cpu) except in tests marked ``gpu``: on a GPU machine
    tests comparing numbers at 1e-6 would otherwise run in TF32/bf16.
    """
    monkeypatch.setenv("CXRTL_CACHE_DIR", str(tmp_path / "cxrtl-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if request.node.get_closest_marker("gpu") is None:
        monkeypatch.setenv("CXRTL_DEVICE", "cpu")
    else:
        monkeypatch.delenv("CXRTL_DEVICE", raising=False)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op torch thread: tiny models run faster and steadier than with contended OpenMP threads."""
    torch = sys.modules.get("torch")  # only where the test module already imported it
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def synth_out(tmp_path_factory):
    from cxrtl.data.synthetic import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, **SYNTH_KW)
    return out


@pytest.fixture(scope="session")
def synth_roots(synth_out):
    """(covid_root, pneumonia_root): COVID-19_Radiography_Dataset (60 images, masks) and chest_xray (40)."""
    return synth_out / "COVID-19_Radiography_Dataset", synth_out / "chest_xray"


@pytest.fixture(scope="session")
def covid_root(synth_roots):
    return synth_roots[0]


@pytest.fixture(scope="session")
def pneumonia_root(synth_roots):
    return synth_roots[1]


@pytest.fixture(scope="session")
def synth_root(synth_roots):
    """A dataset root ready for ``prepare_data``: the synthetic COVID-19 Radiography set."""
    return synth_roots[0]


@pytest.fixture
def covid_copy(covid_root, tmp_path):
    """A private, modifiable copy of the synthetic COVID set."""
    dst = tmp_path / "COVID-19_Radiography_Dataset"
    shutil.copytree(covid_root, dst)
    return dst


@pytest.fixture
def pneumonia_copy(pneumonia_root, tmp_path):
    """A private, modifiable copy of the synthetic Kermany set."""
    dst = tmp_path / "chest_xray"
    shutil.copytree(pneumonia_root, dst)
    return dst


@pytest.fixture
def tiny_pp():
    from cxrtl.data.preprocess import Preprocess

    return Preprocess(input="raw", channels=3, image_size=32)
