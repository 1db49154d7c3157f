"""conv2d_act forward on the sm_90a CUTLASS kernel (csrc/conv2d_act_sm90.cu), called through deepfuse._C directly with
channels_last tensors: against the float64 specification and against the WMMA implicit-GEMM kernel the same device
runs for NCHW tensors. Needs a compute-capability 9.0 GPU (H100/H200); elsewhere these tests are skipped."""

import pytest
import torch
import torch.nn.functional as F

from deepfuse.ops.activations import ACTIVATION_CODES, ACTIVATIONS, activation_ref
from tests.tolerances import ATOL, assert_close_to_reference, max_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="the sm_90a kernel runs on compute capability 9.0 only",
    ),
]

DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2}
# (batch, C, H, W, Cout, kernel, stride, padding, dilation): channel counts multiples of 8 (TMA's 16-byte strides).
# 1x1 (also strided, where the exact bottom padding is negative), 3x3 with padding, stride 2 on odd sizes,
# dilation, a 7x7 stride-2 stem (its 3 input channels padded to 8), C not a multiple of the 64-wide K tile, and more
# output tiles than SMs.
CASES = {
    "1x1": (2, 64, 9, 11, 72, 1, 1, 0, 1),
    "1x1_s2": (2, 64, 8, 8, 64, 1, 2, 0, 1),
    "3x3_p1": (3, 32, 13, 17, 136, 3, 1, 1, 1),
    "3x3_s2_odd": (2, 64, 15, 16, 128, 3, 2, 1, 1),
    "3x3_d2": (2, 16, 12, 10, 24, 3, 1, 2, 2),
    "7x7_stem": (2, 8, 32, 30, 64, 7, 2, 3, 1),
    "c200": (1, 200, 7, 7, 264, 3, 1, 1, 1),
    "large": (8, 256, 28, 28, 256, 3, 1, 1, 1),
}


def _C():
    from deepfuse import _C

    return _C


def out_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def shape16(x, w, stride, padding, dilation):
    """conv2d_act_fwd's shape entries for a square kernel, stride, padding and dilation; groups 1."""
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = w.shape
    oh, ow = out_size(height, kh, stride, padding, dilation), out_size(width, kw, stride, padding, dilation)
    geometry = [kh, kw, stride, stride, padding, padding, dilation, dilation, 1]
    return [batch, channels, height, width, out_channels, oh, ow, *geometry]


def run_fwd(x, w, b, r, activation, stride, padding, dilation, preact=None):
    """_C.conv2d_act_fwd; y keeps x's memory format (or takes preact's strides, where the pre-activation is wanted
    into preact) and starts as NaN (unwritten elements show)."""
    shape = shape16(x, w, stride, padding, dilation)
    fmt = torch.channels_last if x.stride(1) == 1 else torch.contiguous_format
    y = torch.full((shape[0], shape[4], shape[5], shape[6]), float("nan"), device=x.device, dtype=x.dtype)
    if preact is None:
        y = y.contiguous(memory_format=fmt)
    else:
        y = torch.empty_strided(preact.shape, preact.stride(), device=x.device, dtype=x.dtype).fill_(float("nan"))
    _C().conv2d_act_fwd(
        shape,
        x.data_ptr(),
        list(x.stride()),
        w.data_ptr(),
        list(w.stride()),
        0 if b is None else b.data_ptr(),
        0 if r is None else r.data_ptr(),
        [0, 0, 0, 0] if r is None else list(r.stride()),
        y.data_ptr(),
        0 if preact is None else preact.data_ptr(),
        list(y.stride()),
        DTYPE_CODES[x.dtype],
        ACTIVATION_CODES[activation],
        torch.cuda.current_stream().cuda_stream,
    )
    torch.cuda.synchronize()
    return y


def kernel_of(x, w, b, r, stride, padding, dilation, preact=False):
    """The kernel _C picks for run_fwd's call (y in x's layout), as _C.conv2d_act_kernel_name reports it."""
    shape = shape16(x, w, stride, padding, dilation)
    pointers = [x.data_ptr(), w.data_ptr()] + [t.data_ptr() for t in (b, r) if t is not None]
    channels_last = x.stride(1) == 1
    return _C().conv2d_act_kernel_name(
        shape,
        DTYPE_CODES[x.dtype],
        90,
        x_strides=list(x.stride()),
        w_strides=list(w.stride()),
        y_strides=None if channels_last else [shape[4] * shape[5] * shape[6], shape[5] * shape[6], shape[6], 1],
        aligned=all(p % 16 == 0 for p in pointers),
        bias=b is not None,
        residual=r is not None,
        preact=preact,
    )


def make_inputs(case, dtype, bias, residual, seed=0):
    """channels_last x, weight and residual (the layouts the sm_90a kernel takes)."""
    batch, channels, height, width, out_channels, k, stride, padding, dilation = CASES[case]
    g = torch.Generator(device="cuda").manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(batch, channels, height, width, device="cuda", dtype=dtype, generator=g).contiguous(
        memory_format=cl
    )
    w = torch.randn(out_channels, channels, k, k, device="cuda", generator=g) / (channels * k * k) ** 0.5
    w = w.to(dtype).contiguous(memory_format=cl)
    b = torch.randn(out_channels, device="cuda", dtype=dtype, generator=g) if bias else None
    oh, ow = out_size(height, k, stride, padding, dilation), out_size(width, k, stride, padding, dilation)
    r = torch.randn(batch, out_channels, oh, ow, device="cuda", dtype=dtype, generator=g) if residual else None
    return x, w, b, None if r is None else r.contiguous(memory_format=cl)


def reference(x, w, b, r, activation, stride, padding, dilation):
    """y in float64: the specification."""
    z = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation)
    return activation_ref(z if r is None else z + r.double(), activation)


def torch_in_dtype(x, w, b, r, activation, stride, padding, dilation):
    """y as torch computes it in the inputs' dtype: the error yardstick."""
    z = F.conv2d(x, w, b, stride, padding, dilation)
    return activation_ref(z if r is None else z + r, activation)


def check(case, dtype, activation, bias, residual):
    *_, stride, padding, dilation = CASES[case]
    geometry = (stride, padding, dilation)
    x, w, b, r = make_inputs(case, dtype, bias, residual, seed=len(case))
    kernel, why = kernel_of(x, w, b, r, *geometry)
    assert "sm90" in kernel, (case, why)
    y = run_fwd(x, w, b, r, activation, *geometry)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y_ref = reference(x, w, b, r, activation, *geometry)
    y_torch = torch_in_dtype(x, w, b, r, activation, *geometry)
    where = f"{case} {activation} {dtype} bias={bias} residual={residual}"
    assert_close_to_reference(f"y ({where})", y, y_ref, y_torch, dtype)

    # The same call on NCHW tensors takes the WMMA kernel; both accumulate in fp32 and round once.
    xn, wn, rn = x.contiguous(), w.contiguous(), None if r is None else r.contiguous()
    kernel, why = kernel_of(xn, wn, b, rn, *geometry)
    assert "wmma" in kernel and "not channels_last" in why, (case, kernel, why)
    y_wmma = run_fwd(xn, wn, b, rn, activation, *geometry)
    assert_close_to_reference(f"y WMMA ({where})", y_wmma, y_ref, y_torch, dtype)
    bound = 2 * max_error(y_torch, y_ref) + ATOL[dtype]
    assert max_error(y, y_wmma) <= bound, f"{where}: sm_90a and WMMA kernels differ by {max_error(y, y_wmma)}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_sm90_matches_reference_and_the_wmma_kernel(case, dtype):
    check(case, dtype, "gelu", bias=True, residual=True)
    check(case, dtype, "none", bias=False, residual=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sm90_every_activation(activation, dtype):
    check("3x3_s2_odd", dtype, activation, bias=True, residual=activation == "relu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sm90_takes_padded_strides(dtype):
    """x as a channel slice of a wider channels_last tensor (pixel stride C + 16, still 16-byte multiples)."""
    x_wide, w, b, r = make_inputs("3x3_p1", dtype, bias=True, residual=True)
    wide = torch.cat([x_wide, x_wide[:, :16]], dim=1).contiguous(memory_format=torch.channels_last)
    x = wide[:, : x_wide.shape[1]]
    assert x.stride(1) == 1 and x.stride(3) == x_wide.shape[1] + 16
    geometry = CASES["3x3_p1"][-3:]
    assert "sm90" in kernel_of(x, w, b, r, *geometry)[0]
    y = run_fwd(x, w, b, r, "silu", *geometry)
    y_ref = reference(x, w, b, r, "silu", *geometry)
    assert_close_to_reference("y", y, y_ref, torch_in_dtype(x, w, b, r, "silu", *geometry), dtype)


def nan_output(x, w, stride, padding, dilation, pad_channels=0):
    """A NaN channels_last output for the call; with pad_channels, a channel slice of a wider one (the activation
    pass's strided path: pixel stride Cout + pad_channels)."""
    shape = shape16(x, w, stride, padding, dilation)
    wide = torch.full((shape[0], shape[4] + pad_channels, shape[5], shape[6]), float("nan"), device="cuda")
    return wide.to(x.dtype).contiguous(memory_format=torch.channels_last)[:, : shape[4]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("case", ["3x3_s2_odd", "c200"])
def test_sm90_stores_the_preactivation(case, activation, dtype):
    """z from the kernel (activation "none"), y = act(z) from the activation pass: z against the specification of
    the pre-activation, y bit-equal to the activation of the stored z, and y as the fused call gives it."""
    *_, stride, padding, dilation = CASES[case]
    geometry = (stride, padding, dilation)
    x, w, b, r = make_inputs(case, dtype, bias=True, residual=True, seed=3)
    for pad_channels in (0, 16):
        z = nan_output(x, w, *geometry, pad_channels)
        kernel, why = kernel_of(x, w, b, r, *geometry, preact=True)
        assert "sm90" in kernel and "activation pass" in why, why
        y = run_fwd(x, w, b, r, activation, *geometry, preact=z)
        where = f"{case} {activation} {dtype} pad_channels={pad_channels}"
        z_ref = reference(x, w, b, r, "none", *geometry)
        assert_close_to_reference(f"z ({where})", z, z_ref, torch_in_dtype(x, w, b, r, "none", *geometry), dtype)
        y_ref = reference(x, w, b, r, activation, *geometry)
        assert_close_to_reference(f"y ({where})", y, y_ref, torch_in_dtype(x, w, b, r, activation, *geometry), dtype)
        # The pass computes act in fp32 from the stored z and rounds once, as activation_ref on z in fp32 does:
        # at most an ulp apart (CUDA's erff/tanhf/expf against torch's).
        y_of_z = activation_ref(z.float(), activation).to(dtype)
        torch.testing.assert_close(y, y_of_z, rtol=torch.finfo(dtype).eps, atol=ATOL[dtype], msg=where)
        fused = run_fwd(x, w, b, r, activation, *geometry)
        bound = 2 * max_error(torch_in_dtype(x, w, b, r, activation, *geometry), y_ref) + ATOL[dtype]
        assert max_error(y, fused) <= bound, f"{where}: y with and without z differ by {max_error(y, fused)}"


def test_sm90_is_deterministic_with_and_without_the_preactivation():
    x, w, b, r = make_inputs("large", torch.bfloat16, bias=True, residual=False)
    geometry = CASES["large"][-3:]
    first = run_fwd(x, w, b, r, "gelu_tanh", *geometry)
    second = run_fwd(x, w, b, r, "gelu_tanh", *geometry)
    assert torch.equal(first, second)
    z1, z2 = (nan_output(x, w, *geometry) for _ in range(2))
    y1 = run_fwd(x, w, b, r, "gelu_tanh", *geometry, preact=z1)
    y2 = run_fwd(x, w, b, r, "gelu_tanh", *geometry, preact=z2)
    assert torch.equal(z1, z2) and torch.equal(y1, y2)
