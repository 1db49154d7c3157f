"""FusedLinear: a drop-in for nn.Linear (+ activation)."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse.nn import FusedLinear
from deepfuse.ops import linear_act_ref
from tests.tolerances import assert_close_to_reference


def test_same_init_parameters_and_state_dict_as_nn_linear():
    torch.manual_seed(0)
    ours = FusedLinear(13, 7, activation="gelu")
    torch.manual_seed(0)
    theirs = nn.Linear(13, 7)
    assert isinstance(ours, nn.Linear)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    no_bias = FusedLinear(5, 3, bias=False)
    assert list(no_bias.state_dict()) == ["weight"] and no_bias.bias is None
    # state_dicts load both ways
    nn.Linear(13, 7).load_state_dict(ours.state_dict())
    FusedLinear(13, 7, activation="relu").load_state_dict(theirs.state_dict())


def test_dtype_device_and_repr():
    layer = FusedLinear(4, 2, activation="silu", dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == torch.float64
    assert "activation='silu'" in repr(layer)
    with pytest.raises(ValueError, match="activation must be one of"):
        FusedLinear(4, 2, activation="swish")


def test_from_torch_equals_linear_then_activation():
    linear = nn.Linear(9, 5).double()
    fused = FusedLinear.from_torch(linear, activation="tanh")
    x = torch.randn(3, 9, dtype=torch.float64)
    assert torch.equal(fused(x), torch.tanh(linear(x)))
    assert fused.weight.dtype == torch.float64 and fused.weight is not linear.weight
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        FusedLinear.from_torch(nn.Conv2d(1, 1, 1))


def _mlp(layer_cls, **kwargs):
    torch.manual_seed(1)
    first = nn.Linear(20, 32)
    second = nn.Linear(32, 4)
    if layer_cls is FusedLinear:
        return nn.Sequential(FusedLinear.from_torch(first, "gelu"), FusedLinear.from_torch(second))
    return nn.Sequential(first, nn.GELU(), second)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_training_steps_match_torch(backend):
    """A few SGD steps of a 2-layer MLP: losses and every gradient agree with the torch model."""
    ours, theirs = _mlp(FusedLinear), _mlp(nn.Linear)
    reference = _mlp(nn.Linear).double()
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, theirs, reference)]
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(16, 20, generator=g)
        target = torch.randn(16, 4, generator=g)
        losses = []
        for model, optimizer in zip((ours, theirs, reference), optimizers, strict=True):
            optimizer.zero_grad()
            dtype = next(model.parameters()).dtype
            with deepfuse.use_backend(backend):
                loss = nn.functional.mse_loss(model(x.to(dtype)), target.to(dtype))
            loss.backward()
            losses.append(loss.detach())
        assert_close_to_reference("loss", losses[0], losses[2], losses[1], torch.float32)
        for p_ours, p_theirs, p_ref in zip(ours.parameters(), theirs.parameters(), reference.parameters(), strict=True):
            assert_close_to_reference("grad", p_ours.grad, p_ref.grad, p_theirs.grad, torch.float32)
        for optimizer in optimizers:
            optimizer.step()


def test_layer_forward_matches_reference_under_no_grad():
    layer = FusedLinear(6, 4, activation="leaky_relu").double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(layer(x), linear_act_ref(x, layer.weight, layer.bias, "leaky_relu"))
