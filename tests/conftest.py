"""Test setup. Without a GPU, Triton kernels run through the interpreter, which must be switched on before
any module holding @triton.jit kernels is imported — hence here, before the tests import deepfuse."""

import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run `make test-gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Kernel outputs start as NaN, so any element a kernel fails to write fails the comparison."""
    from deepfuse.kernels import utils

    monkeypatch.setattr(utils, "POISON_OUTPUTS", True)


@pytest.fixture
def one_thread():
    """One torch thread for the test: on small batches torch's second thread mostly waits on a busy 2-core machine
    (seconds per step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _realdata_folder():
    """../shared/realdata (real sample files of every dataset), found through DEEPFUSE_REALDATA (the Makefile
    sets it) or beside the repository; None when this machine has no copy."""
    from pathlib import Path

    candidates = [os.environ.get("DEEPFUSE_REALDATA"), Path(__file__).resolve().parents[2] / "shared" / "realdata"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def realdata():
    """The real sample files' folder; the test is skipped, with the reason, where there is none (session-scoped:
    module fixtures that train once on the real sample use it too)."""
    folder = _realdata_folder()
    if folder is None:
        pytest.skip("no ../shared/realdata here (set DEEPFUSE_REALDATA to the folder of real sample files)")
    return folder
