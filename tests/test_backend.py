"""Backend registry and dispatch rules."""

import importlib

import pytest
import torch

import deepfuse
from deepfuse import backend as backend_module
from deepfuse.ops import linear_act
from tests.conftest import HAS_GPU

# The module, not the function deepfuse.ops re-exports under the same name.
linear_act_module = importlib.import_module("deepfuse.ops.linear_act")


def _inputs(dtype=torch.float32):
    return torch.randn(4, 6, dtype=dtype), torch.randn(3, 6, dtype=dtype), torch.randn(3, dtype=dtype)


@pytest.fixture
def spies(monkeypatch):
    """Records which backend's forward actually ran."""
    ran = []

    def spy_on(name, impl):
        def spy(*args):
            ran.append(name)
            return impl(*args)

        return spy

    for name, impl in list(linear_act_module._FWD.items()):
        monkeypatch.setitem(linear_act_module._FWD, name, spy_on(name, impl))
    # The torch backend runs torch's own differentiable ops (the reference) directly.
    monkeypatch.setattr(linear_act_module, "linear_act_ref", spy_on("torch", linear_act_module.linear_act_ref))
    return ran


def test_available_backends_reports_every_backend_with_a_reason():
    available = deepfuse.available_backends()
    assert set(available) == {"torch", "triton", "cuda"}
    assert available["torch"] == (True, "")
    for name, (ok, reason) in available.items():
        assert isinstance(ok, bool) and isinstance(reason, str)
        if not ok:
            assert reason, f"{name} is unavailable without a reason"
    if not HAS_GPU:
        assert available["cuda"][0] is False
        assert "cuda" in available["cuda"][1].lower() or "not built" in available["cuda"][1]


def test_cpu_tensors_use_torch_automatically(spies):
    linear_act(*_inputs(), "relu")
    assert spies == ["torch"]
    assert deepfuse.explain("linear_act", *_inputs(), "relu").chosen == "torch"


def test_explicit_backend_is_used_and_never_replaced(spies, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    linear_act(*_inputs(), "relu", backend="triton")
    assert spies == ["triton"]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if not HAS_GPU:
        with pytest.raises(deepfuse.BackendUnavailableError, match="triton.*TRITON_INTERPRET"):
            linear_act(*_inputs(), "relu", backend="triton")
    with pytest.raises(deepfuse.BackendUnavailableError, match="'cuda'"):
        linear_act(*_inputs(), "relu", backend="cuda")  # CPU tensors, wherever this runs
    assert spies == ["triton"]


def test_use_backend_context_nests_and_restores(spies):
    with deepfuse.use_backend("triton"):
        linear_act(*_inputs())
        with deepfuse.use_backend("torch"):
            linear_act(*_inputs())
        with deepfuse.use_backend("auto"):
            linear_act(*_inputs())
        linear_act(*_inputs())
    linear_act(*_inputs())
    assert spies == ["triton", "torch", "torch", "triton", "torch"]
    assert backend_module._backend_stack == []


def test_use_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="use_backend"), deepfuse.use_backend("cudnn"):
        pass


@pytest.fixture
def environment(monkeypatch):
    """Sets DEEPFUSE_BACKEND and has deepfuse read it; the original is read back afterwards."""

    def set_backend(value):
        monkeypatch.setenv("DEEPFUSE_BACKEND", value)
        backend_module.read_environment()

    yield set_backend
    monkeypatch.undo()
    backend_module.read_environment()


def test_environment_variable_sets_the_backend(spies, environment):
    environment("triton")
    linear_act(*_inputs())
    assert spies == ["triton"]
    assert "DEEPFUSE_BACKEND" in deepfuse.explain("linear_act", *_inputs()).reasons["triton"]
    environment("bogus")
    with pytest.raises(ValueError, match="DEEPFUSE_BACKEND must be one of"):
        linear_act(*_inputs())


def test_argument_beats_context_beats_environment(spies, environment):
    environment("triton")
    with deepfuse.use_backend("torch"):
        linear_act(*_inputs())
        linear_act(*_inputs(), backend="triton")
    assert spies == ["torch", "triton"]


def test_explain_gives_a_reason_for_every_backend():
    choice = deepfuse.explain("linear_act", *_inputs(torch.float64), "gelu", backend="torch")
    assert choice.chosen == "torch"
    assert set(choice.reasons) == {"torch", "triton", "cuda"}
    assert "float64" in choice.reasons["triton"]
    text = str(choice)
    assert text.startswith("linear_act: runs on 'torch'") and "cuda" in text
    refused = deepfuse.explain("linear_act", *_inputs(torch.float64), backend="triton")
    assert refused.chosen is None and "float64" in refused.error
    with pytest.raises(ValueError, match="op_name must be one of"):
        deepfuse.explain("conv9d", *_inputs())


@pytest.mark.gpu
def test_gpu_automatic_choice_follows_the_preference_order():
    x, w, b = (t.cuda().half() for t in _inputs())
    choice = deepfuse.explain("linear_act", x, w, b)
    assert choice.chosen in ("triton", "cuda"), str(choice)
    assert deepfuse.explain("linear_act", x.float(), w.float(), b.float()).chosen == "torch"
