"""FusedConv2d and ConvBNAct: drop-ins for nn.Conv2d (+ BatchNorm2d) + activation."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse.nn import ConvBNAct, FusedConv2d
from tests.tolerances import assert_close_to_reference


def _randomise_bn(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return bn


def test_same_init_parameters_and_state_dict_as_nn_conv2d():
    torch.manual_seed(0)
    ours = FusedConv2d(3, 8, 3, stride=2, padding=1, activation="relu")
    torch.manual_seed(0)
    theirs = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    assert isinstance(ours, nn.Conv2d)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    nn.Conv2d(3, 8, 3).load_state_dict(ours.state_dict())
    assert "activation='relu'" in repr(ours)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_forward_and_backward_match_conv_then_activation(backend):
    torch.manual_seed(1)
    ours = FusedConv2d(4, 6, 3, padding="same", groups=2, activation="silu")
    theirs = nn.Conv2d(4, 6, 3, padding="same", groups=2)
    theirs.load_state_dict(ours.state_dict())
    reference = nn.Conv2d(4, 6, 3, padding="same", groups=2).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 7, 9)
    with deepfuse.use_backend(backend):
        y = ours(x)
    y_theirs, y_ref = nn.functional.silu(theirs(x)), nn.functional.silu(reference(x.double()))
    assert_close_to_reference("y", y.detach(), y_ref.detach(), y_theirs.detach(), torch.float32)
    for out in (y, y_theirs, y_ref):
        out.square().sum().backward()
    for p, p_theirs, p_ref in zip(ours.parameters(), theirs.parameters(), reference.parameters(), strict=True):
        assert_close_to_reference("grad", p.grad, p_ref.grad, p_theirs.grad, torch.float32)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_from_torch_folds_batch_norm_in_eval(backend):
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    bn = _randomise_bn(nn.BatchNorm2d(5), seed=3).eval()
    fused = FusedConv2d.from_torch(conv, bn, activation="relu")
    x = torch.randn(2, 3, 9, 8)
    with torch.no_grad(), deepfuse.use_backend(backend):
        y = fused(x)
        expected = torch.relu(bn(conv(x)))
        reference = torch.relu(bn.double()(conv.double()(x.double())))
    assert_close_to_reference("y", y, reference, expected, torch.float32)
    plain = FusedConv2d.from_torch(conv.float())
    assert torch.equal(plain.weight, conv.weight) and torch.equal(plain.bias, conv.bias)
    reflect = nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect")
    with torch.no_grad(), deepfuse.use_backend(backend):
        assert_close_to_reference("reflect", FusedConv2d.from_torch(reflect)(x), reflect.double()(x.double()),
                                  reflect.float()(x), torch.float32)  # fmt: skip
    with pytest.raises(ValueError, match="running statistics"):
        FusedConv2d.from_torch(conv, nn.BatchNorm2d(5, track_running_stats=False))


def test_conv_bn_act_state_dict_matches_sequential():
    ours = ConvBNAct(3, 8, 3, padding=1)
    theirs = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_conv_bn_act_trains_and_evaluates_like_sequential(backend):
    torch.manual_seed(4)
    ours = ConvBNAct(3, 6, 3, stride=2, padding=1, activation="gelu")
    _randomise_bn(ours[1], seed=5)
    theirs = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.GELU())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    reference = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6), nn.GELU())
    reference.load_state_dict(ours.state_dict())
    reference.double()
    x = torch.randn(4, 3, 9, 10)
    with deepfuse.use_backend(backend):
        y = ours(x)  # training: batch statistics
    assert_close_to_reference("train y", y.detach(), reference(x.double()).detach(), theirs(x).detach(), torch.float32)
    # Running statistics moved the same way.
    assert_close_to_reference("running_mean", ours[1].running_mean, reference[1].running_mean,
                              theirs[1].running_mean, torch.float32)  # fmt: skip
    for model in (ours, theirs, reference):
        model.eval()
    with torch.no_grad(), deepfuse.use_backend(backend):
        y = ours(x)  # eval: folded into one fused convolution
    expected, ref = theirs(x), reference(x.double())
    assert_close_to_reference("eval y", y, ref, expected, torch.float32)
