"""conv2d_act: every backend against a float64 reference, forward and backward; layouts, geometry, bad input."""

import pytest
import torch
from torch.library import opcheck

import deepfuse
from deepfuse.ops import conv2d_act, conv2d_act_ref
from deepfuse.ops.conv2d_act import conv2d_act_bwd, conv2d_act_fwd
from tests.reference import check_against_reference, forward_backward

# (batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, activation, channels_last, residual)
CPU_CASES = {
    "3x3_pad1_relu": (2, 3, 9, 11, 5, 3, 1, 1, 1, 1, "relu", False, False),
    "channels_last_stride2_valid_gelu": (2, 4, 9, 11, 6, 3, 2, "valid", 1, 1, "gelu", True, False),
    "dilated_same_grouped_silu_residual": (1, 4, 8, 8, 4, 3, 1, "same", 2, 2, "silu", False, True),
    "even_kernel_same_asymmetric_tanh": (2, 3, 7, 7, 5, 2, 1, "same", 1, 1, "tanh", True, True),
    "depthwise_leaky_relu": (2, 6, 7, 9, 6, 3, 1, 1, 1, 6, "leaky_relu", True, False),
    "1x1_stride2_sigmoid": (2, 8, 6, 7, 5, 1, 2, 0, 1, 1, "sigmoid", False, False),
    "c_in1_5x5_stride2_pilotnet_like": (1, 1, 13, 17, 4, 5, 2, 0, 1, 1, "gelu_tanh", False, False),
    "odd_stride_pad_none": (1, 3, 10, 9, 7, 3, (2, 3), (1, 2), 1, 1, "none", True, True),
}
# The six models' layers (GPU): digits 1x28x28 / 1x8x8, RGB 3x128x128 and 3x224x224, X-ray 1x224x224,
# PilotNet 3x66x200 (5x5 stride 2, then 3x3), 1x1, stride 2, ResNet-style 56x56x64 and 28x28x128.
GPU_CASES = {
    "digits_28": (64, 1, 28, 28, 32, 3, 1, 1, 1, 1, "relu", True, False),
    "digits_8": (64, 1, 8, 8, 16, 3, 1, "same", 1, 1, "relu", False, False),
    "rgb_128": (16, 3, 128, 128, 32, 3, 2, 1, 1, 1, "relu", True, False),
    "rgb_224": (8, 3, 224, 224, 64, 7, 2, 3, 1, 1, "relu", True, False),
    "xray_224": (8, 1, 224, 224, 32, 3, 1, 1, 1, 1, "silu", True, False),
    "pilotnet_5x5_s2": (32, 3, 66, 200, 24, 5, 2, 0, 1, 1, "relu", True, False),
    "pilotnet_3x3": (32, 48, 5, 22, 64, 3, 1, 0, 1, 1, "relu", True, False),
    "resnet_56_residual": (16, 64, 56, 56, 64, 3, 1, 1, 1, 1, "relu", True, True),
    "resnet_28_1x1_s2": (16, 128, 28, 28, 256, 1, 2, 0, 1, 1, "none", True, False),
    "depthwise_28": (16, 128, 28, 28, 128, 3, 1, 1, 1, 128, "relu", True, False),
}


def make_case(case, dtype, device="cpu", seed=0):
    batch, cin, H, W, cout, k, stride, padding, dilation, groups, activation, channels_last, residual = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, H, W, generator=g, dtype=torch.float64)
    fan_in = cin // groups * k * k
    w = torch.randn(cout, cin // groups, k, k, generator=g, dtype=torch.float64) / fan_in**0.5
    b = torch.randn(cout, generator=g, dtype=torch.float64)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = conv2d_act_ref(x, w, b, **geometry)
    r = torch.randn(out.shape, generator=g, dtype=torch.float64) if residual else None
    dy = torch.randn(out.shape, generator=g, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def cast(t):
        if t is None:
            return None
        t = t.to(device=device, dtype=dtype)
        return t.contiguous(memory_format=fmt) if t.ndim == 4 else t

    return (cast(x), cast(w), cast(b), cast(r)), cast(dy), geometry, activation


def check_case(backend, case, dtype, device="cpu", seed=0):
    tensors, dy, geometry, activation = make_case(case, dtype, device, seed)

    def ours(x, w, b, r):
        return conv2d_act(x, w, b, **geometry, activation=activation, residual=r, backend=backend)

    def spec(x, w, b, r):
        return conv2d_act_ref(x, w, b, **geometry, activation=activation, residual=r)

    out, grads = check_against_reference(ours, spec, tensors, dy, ("x", "w", "b", "residual"))
    if case[11]:
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous() and grads[0].is_contiguous()


@pytest.mark.parametrize("case", CPU_CASES.values(), ids=CPU_CASES.keys())
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.usefixtures("poison_outputs")
def test_matches_reference_fp32(backend, case):
    check_case(backend, case, torch.float32)


@pytest.mark.parametrize("name", ["3x3_pad1_relu", "depthwise_leaky_relu", "even_kernel_same_asymmetric_tanh"])
@pytest.mark.usefixtures("poison_outputs")
def test_triton_matches_reference_fp16(name):
    check_case("triton", CPU_CASES[name], torch.float16)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_unbatched_input_and_no_bias(backend):
    x = torch.randn(3, 6, 5)
    w = torch.randn(4, 3, 3, 3)
    y = conv2d_act(x, w, None, padding=1, activation="relu", backend=backend)
    assert y.shape == (4, 6, 5)
    torch.testing.assert_close(y, conv2d_act_ref(x, w, None, padding=1, activation="relu"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend):
    x = torch.randn(0, 3, 6, 5, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    y = conv2d_act(x, w, b, padding=1, activation="gelu", backend=backend)
    assert y.shape == (0, 4, 6, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    assert x.grad.shape == x.shape


def test_autocast_runs_in_the_autocast_dtype():
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv2d_act(x, w, b, padding=1, activation="relu")
        expected = torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
    assert y.dtype == torch.bfloat16 == expected.dtype
    assert torch.equal(y, expected)


def test_triton_is_deterministic():
    tensors, dy, geometry, activation = make_case(CPU_CASES["dilated_same_grouped_silu_residual"], torch.float32)

    def run():
        return forward_backward(
            lambda *t: conv2d_act(*t[:3], **geometry, activation=activation, residual=t[3], backend="triton"),
            tensors,
            dy,
        )

    (y1, g1), (y2, g2) = run(), run()
    assert torch.equal(y1, y2) and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def _bad_input_cases():
    x, w, b = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)
    return [
        (dict(x=x, weight=torch.randn(6, 3, 3, 3)), ValueError, r"weight must have shape \(out_channels, in_chan"),
        (dict(x=x, weight=torch.randn(6, 2, 3, 3), groups=3), ValueError, r"groups=3 must divide"),
        (dict(x=x, weight=w, groups=0), ValueError, r"groups must be a positive int"),
        (dict(x=x, weight=torch.randn(6, 4, 9, 9)), ValueError, r"larger than the padded input"),
        (dict(x=x, weight=w, residual=torch.randn(2, 6, 8, 8)), ValueError, r"residual must have the output's shape"),
        (dict(x=x, weight=w, bias=b[:5]), ValueError, r"bias must have shape \(out_channels=6,\)"),
        (dict(x=x.long(), weight=w), TypeError, r"x must be a floating-point tensor"),
        (dict(x=x, weight=w.double()), TypeError, r"weight.dtype is torch.float64 but x.dtype is torch.float32"),
        (dict(x=x[0, 0], weight=w), ValueError, r"x must be \(batch, channels, height, width\)"),
        (dict(x=x, weight=w[0]), ValueError, r"weight must be 4-D"),
        (dict(x=x, weight=w, stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair"),
        (dict(x=x, weight=w, stride=0), ValueError, r"stride and dilation must be >= 1"),
        (dict(x=x, weight=w, padding="full"), ValueError, r"padding must be an int, a pair, 'same' or 'valid'"),
        (dict(x=x, weight=w, padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
        (dict(x=x, weight=w, activation="relu6"), ValueError, r"activation must be one of"),
        (dict(x=x, weight=w, backend="cuda"), deepfuse.BackendUnavailableError, r"backend 'cuda'.*cannot run"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_input_cases())))
def test_bad_input_raises_a_clear_error(case):
    kwargs, error, message = _bad_input_cases()[case]
    with pytest.raises(error, match=message):
        conv2d_act(**kwargs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    x = torch.randn(2, 4, 7, 6, requires_grad=True).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    r = torch.randn(2, 6, 4, 3, requires_grad=True)
    geometry = ([2, 2], [1, 1, 1, 1], [1, 1], 2)
    opcheck(conv2d_act_fwd.custom_op, (x, w, b, r, *geometry, "gelu", True, backend))
    w1 = torch.randn(6, 4, 2, 2, requires_grad=True)  # asymmetric "same" padding, no bias, no residual
    opcheck(conv2d_act_fwd.custom_op, (x, w1, None, None, [1, 1], [0, 1, 0, 1], [1, 1], 1, "relu", False, backend))
    dy, saved = torch.randn(2, 6, 4, 3), torch.randn(2, 6, 4, 3)
    args = (dy, saved, x.detach(), w.detach(), *geometry, "gelu", True, True, True, True, backend)
    opcheck(conv2d_act_bwd.custom_op, args)


def test_compiles_fullgraph():
    torch._dynamo.reset()
    x, w, b = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4)
    fn = torch.compile(lambda x, w, b: conv2d_act(x, w, b, padding="same", activation="silu"), fullgraph=True)
    y = fn(x, w, b)
    y.sum().backward()
    w_eager = w.detach().clone().requires_grad_()
    y_eager = conv2d_act(x, w_eager, b, padding="same", activation="silu")
    y_eager.sum().backward()
    # The torch backend is plain torch code that Inductor compiles (and may fuse): equal to rounding.
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(w.grad, w_eager.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", GPU_CASES.values(), ids=GPU_CASES.keys())
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_model_layers(backend, case, dtype, poison_outputs):
    check_case(backend, case, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CPU_CASES.values(), ids=CPU_CASES.keys())
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_odd_geometry(backend, case, poison_outputs):
    check_case(backend, case, torch.float16, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_opcheck(backend):
    x = torch.randn(2, 4, 7, 6, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 2, 3, 3, device="cuda", dtype=torch.float16)
    b = torch.randn(6, device="cuda", dtype=torch.float16)
    r = torch.randn(2, 6, 4, 3, device="cuda", dtype=torch.float16)
    geometry = ([2, 2], [1, 1, 1, 1], [1, 1], 2)
    opcheck(conv2d_act_fwd.custom_op, (x.requires_grad_(), w, b, r, *geometry, "gelu", True, backend))
    dy, saved = torch.randn_like(r), torch.randn_like(r)
    opcheck(conv2d_act_bwd.custom_op, (dy, saved, x.detach(), w, *geometry, "gelu", True, True, True, True, backend))


# Hopper: the weight by TMA (kernels/conv2d_act._weight_descriptor) where Cin_g * element size is a multiple of 16 B.
# (batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, activation, channels_last, residual):
# grouped with 6 output channels per group (the descriptor zero-fills past each group's), 1x1 at stride 2, dilated.
TMA_CASES = {
    "grouped_3x3_residual": (2, 16, 7, 9, 12, 3, 1, 1, 1, 2, "relu", True, True),
    "1x1_stride2_gelu": (2, 8, 6, 7, 5, 1, 2, 0, 1, 1, "gelu", False, False),
    "dilated_same_silu": (1, 8, 9, 9, 10, 3, 1, "same", 2, 1, "silu", True, False),
}


@pytest.fixture
def weight_by_tma(monkeypatch):
    """The launchers believe the tensors live on a Hopper device; returns the W_TMA flags of their launches."""
    from deepfuse.kernels import conv2d_act as kernels

    monkeypatch.setattr(kernels, "hopper_device", lambda tensor: True)
    taken = []
    choose = kernels._weight_descriptor

    def spy(*args):
        chosen = choose(*args)
        taken.append(chosen[0])
        return chosen

    monkeypatch.setattr(kernels, "_weight_descriptor", spy)
    return taken


@pytest.mark.parametrize(("dtype", "tf32"), [(torch.float16, False), (torch.float32, True)], ids=["fp16", "tf32"])
@pytest.mark.parametrize("case", TMA_CASES.values(), ids=TMA_CASES.keys())
@pytest.mark.usefixtures("poison_outputs")
def test_triton_weight_by_tma_matches_reference(case, dtype, tf32, weight_by_tma, monkeypatch):
    # fp32 takes TMA only with TF32 dots (the interpreter computes them in full fp32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    check_case("triton", case, dtype)
    assert weight_by_tma == [True, True]  # forward and dx


def test_weight_stays_pointer_based_where_tma_cannot_load_it(weight_by_tma, monkeypatch):
    from deepfuse.kernels import conv2d_act as kernels

    x, w = torch.randn(1, 6, 5, 5, dtype=torch.float16), torch.randn(4, 6, 3, 3, dtype=torch.float16)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert kernels._weight_descriptor(None, x, w, 1) == (False, None)  # 6 channels: 12-byte rows
    assert kernels._weight_descriptor(None, x.float(), w.float()[:, :4], 1) == (False, None)  # IEEE fp32: FMA dots
    assert kernels._weight_descriptor("pointer", x, w[:, :4], 1) == (False, None)
    with pytest.raises(ValueError, match="16 bytes"):
        kernels._weight_descriptor("tma", x, w, 1)
    with pytest.raises(ValueError, match="variant must be"):
        kernels._weight_descriptor("wgmma", x, w, 1)
    taps = kernels.weight_taps(torch.arange(2 * 3 * 2 * 2.0).view(2, 3, 2, 2), 1)
    assert taps.shape == (4, 1, 2, 3) and taps[1, 0, 1, 2] == 1 * 12 + 2 * 4 + 0 * 2 + 1  # w[co=1, ci=2, kh=0, kw=1]
