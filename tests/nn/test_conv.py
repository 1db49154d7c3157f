"""FusedConv2d, ConvBNAct and FusedConvBN2d: drop-ins for nn.Conv2d (+ BatchNorm2d) + activation."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse.nn import ConsumedBatchNorm2d, ConvBNAct, FusedConv2d, FusedConvBN2d
from tests.tolerances import assert_close_to_reference


def randomise_bn(bn: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    """``bn`` with seeded random affine parameters and running statistics (variances and scales in [0.5, 1.5)), so
    that folding it is not an identity."""
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
    bn = randomise_bn(nn.BatchNorm2d(5), seed=3).eval()
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
        assert_close_to_reference(
            "reflect",
            FusedConv2d.from_torch(reflect)(x),
            reflect.double()(x.double()),
            reflect.float()(x),
            torch.float32,
        )
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
    randomise_bn(ours[1], seed=5)
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
    assert_close_to_reference(
        "running_mean", ours[1].running_mean, reference[1].running_mean, theirs[1].running_mean, torch.float32
    )
    for model in (ours, theirs, reference):
        model.eval()
    with torch.no_grad(), deepfuse.use_backend(backend):
        y = ours(x)  # eval: folded into one fused convolution
    expected, ref = theirs(x), reference(x.double())
    assert_close_to_reference("eval y", y, ref, expected, torch.float32)


def _conv_bn_relu(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(6), nn.ReLU())
    randomise_bn(model[1], seed)
    return model


def _bind_fused_conv_bn(theirs: nn.Sequential) -> nn.Sequential:
    """A copy of Conv2d → BatchNorm2d → ReLU with FusedConvBN2d in slot 0 applying the BatchNorm of slot 1."""
    ours = _conv_bn_relu(0)
    ours.load_state_dict(theirs.state_dict())
    conv = FusedConvBN2d(3, 6, 3, padding=1, padding_mode="reflect", activation="relu")
    conv.load_state_dict(ours[0].state_dict())
    ours[0], ours[2] = conv, nn.Identity()
    conv.bind_batch_norm(ours, "1", "0")
    return ours


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_conv_bn_applies_the_batch_norm_of_its_slot_in_training_and_eval(backend):
    theirs = _conv_bn_relu(7)
    ours = _bind_fused_conv_bn(theirs)
    reference = _conv_bn_relu(0)
    reference.load_state_dict(theirs.state_dict())
    reference.double()
    assert type(ours[1]) is ConsumedBatchNorm2d and list(ours.state_dict()) == list(theirs.state_dict())
    assert torch.equal(ours[1](torch.ones(2, 6, 1, 1)), torch.ones(2, 6, 1, 1))  # the slot passes through
    x = torch.randn(2, 3, 7, 9)
    for mode in ("train", "eval"):  # batch statistics, then the BN folded into the convolution
        for model in (ours, theirs, reference):
            getattr(model, mode)()
        x_ours, x_theirs, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_(), x.double().requires_grad_()
        with deepfuse.use_backend(backend):
            y = ours(x_ours)
        expected, ref = theirs(x_theirs), reference(x_ref)
        assert_close_to_reference(f"{mode} y", y.detach(), ref.detach(), expected.detach(), torch.float32)
        dy = torch.randn_like(y)
        for result in (y, expected, ref):
            result.backward(dy.to(result.dtype))
        assert_close_to_reference(f"{mode} x.grad", x_ours.grad, x_ref.grad, x_theirs.grad, torch.float32)
        for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
            grads = [dict(m.named_parameters())[name].grad for m in (ours, reference, theirs)]
            assert_close_to_reference(f"{mode} {name}.grad", *grads, torch.float32)
            for m in (ours, reference, theirs):
                dict(m.named_parameters())[name].grad = None
        for buffer in ("1.running_mean", "1.running_var"):  # updated in training exactly as torch's
            buffers = [dict(m.named_buffers())[buffer] for m in (ours, reference, theirs)]
            assert_close_to_reference(f"{mode} {buffer}", *buffers, torch.float32)


def test_fused_conv_bn_names_a_missing_or_replaced_batch_norm():
    conv = FusedConvBN2d(3, 6, 3)
    with pytest.raises(RuntimeError, match="no BatchNorm2d bound"):
        conv(torch.randn(1, 3, 5, 5))
    with pytest.raises(TypeError, match="slot '1' of the parent must hold an nn.BatchNorm2d, got ReLU"):
        conv.bind_batch_norm(nn.Sequential(conv, nn.ReLU()), "1")
    parent = nn.Sequential(conv, nn.BatchNorm2d(6))
    conv.bind_batch_norm(parent, "1")
    parent[1] = nn.BatchNorm2d(6)  # replaced after binding
    with pytest.raises(RuntimeError, match="no longer in slot '1'"):
        conv(torch.randn(1, 3, 5, 5))
    assert type(ConsumedBatchNorm2d.release(_bound_bn())) is nn.BatchNorm2d


def _bound_bn() -> ConsumedBatchNorm2d:
    parent = nn.Sequential(FusedConvBN2d(3, 6, 3), nn.BatchNorm2d(6))
    parent[0].bind_batch_norm(parent, "1")
    return parent[1]
