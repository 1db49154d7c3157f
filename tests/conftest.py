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
