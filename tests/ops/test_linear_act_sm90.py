"""linear_act forward on the sm_90a CUTLASS kernel (csrc/gemm_sm90.cu), called through deepfuse._C directly: against
the float64 specification and against the WMMA kernel the same device runs for calls TMA cannot take. Needs a
compute-capability 9.0 GPU (H100/H200); elsewhere these tests are skipped."""

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
# (M, N, K): N and K multiples of 8 (TMA's 16-byte strides), M anything; single rows, partial 128 x 256 tiles,
# a K of one pipeline stage and of many, and more tiles than SMs (the persistent scheduler loops).
SHAPES = [(1, 8, 8), (7, 136, 72), (129, 264, 520), (1000, 1000, 1000), (2048, 4096, 512), (33, 512, 4096)]


def _C():
    from deepfuse import _C

    return _C


def run_fwd(x, w, b, activation, preact=True):
    """_C.linear_act_fwd on x (M, K), w (N, K) with any row strides; y and z start as NaN (unwritten shows)."""
    M, K = x.shape
    N = w.shape[0]
    y = torch.full((M, N), float("nan"), device=x.device, dtype=x.dtype)
    z = torch.full_like(y, float("nan")) if preact else None
    _C().linear_act_fwd(
        x.data_ptr(),
        x.stride(0),
        x.stride(1),
        w.data_ptr(),
        w.stride(0),
        w.stride(1),
        0 if b is None else b.data_ptr(),
        y.data_ptr(),
        0 if z is None else z.data_ptr(),
        M,
        N,
        K,
        DTYPE_CODES[x.dtype],
        ACTIVATION_CODES[activation],
        torch.cuda.current_stream().cuda_stream,
    )
    torch.cuda.synchronize()
    return y, z


def kernel_of(x, w, b, preact=True):
    """The kernel _C picks for run_fwd's call, as _C.linear_act_kernel_name reports it."""
    pointers = [x.data_ptr(), w.data_ptr()] + ([] if b is None else [b.data_ptr()])
    kernel, _ = _C().linear_act_kernel_name(
        x.shape[0],
        w.shape[0],
        x.shape[1],
        DTYPE_CODES[x.dtype],
        90,
        x_stride_m=x.stride(0),
        w_stride_n=w.stride(0),
        aligned=all(p % 16 == 0 for p in pointers),
        bias=b is not None,
        preact=preact,
    )
    return kernel


def misaligned_copy(t):
    """t's values at an address 2 bytes past a 16-byte boundary: TMA cannot take it, so _C runs the WMMA kernel."""
    storage = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
    return storage[1:].view_as(t).copy_(t)


def make_inputs(M, N, K, dtype, bias, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, device="cuda", dtype=dtype, generator=g)
    w = (torch.randn(N, K, device="cuda", dtype=dtype, generator=g) / K**0.5).to(dtype)
    b = torch.randn(N, device="cuda", dtype=dtype, generator=g) if bias else None
    return x, w, b


def reference(x, w, b, activation):
    """(z, y) in float64: the specification."""
    z = x.double() @ w.double().T + (0 if b is None else b.double())
    return z, activation_ref(z, activation)


def torch_in_dtype(x, w, b, activation):
    """(z, y) as torch computes them in the inputs' dtype: the error yardstick."""
    z = F.linear(x, w, b)
    return z, activation_ref(z, activation)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sm90_matches_reference_and_the_wmma_kernel(activation, bias, dtype):
    for M, N, K in SHAPES:
        x, w, b = make_inputs(M, N, K, dtype, bias, seed=M + N + K)
        assert "sm90" in kernel_of(x, w, b), (M, N, K)
        y, z = run_fwd(x, w, b, activation)
        z_ref, y_ref = reference(x, w, b, activation)
        z_torch, y_torch = torch_in_dtype(x, w, b, activation)
        where = f"{activation} {dtype} bias={bias} M={M} N={N} K={K}"
        assert_close_to_reference(f"y ({where})", y, y_ref, y_torch, dtype)
        assert_close_to_reference(f"preact ({where})", z, z_ref, z_torch, dtype)

        xw, ww = misaligned_copy(x), misaligned_copy(w)
        assert "wmma" in kernel_of(xw, ww, b), (M, N, K)
        y_wmma, z_wmma = run_fwd(xw, ww, b, activation)
        assert_close_to_reference(f"y WMMA ({where})", y_wmma, y_ref, y_torch, dtype)
        # Both accumulate in fp32 and round once: they may differ by about what torch's own rounding errs, no more.
        bound = 2 * max_error(y_torch, y_ref) + ATOL[dtype]
        assert max_error(y, y_wmma) <= bound, f"{where}: sm_90a and WMMA kernels differ by {max_error(y, y_wmma)}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sm90_without_preact_leaves_nothing_unwritten_and_matches(dtype):
    """The pre-activation store is skipped when its pointer is 0; y is the same as with it."""
    x, w, b = make_inputs(300, 264, 136, dtype, bias=True)
    y_alone, none = run_fwd(x, w, b, "gelu", preact=False)
    y_with, _ = run_fwd(x, w, b, "gelu", preact=True)
    assert none is None and torch.equal(y_alone, y_with)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sm90_takes_padded_row_strides(dtype):
    """x and w as column slices of wider tensors (row strides K + 24, still 16-byte multiples): TMA strides them."""
    M, N, K = 257, 264, 200
    x_wide, w_wide, b = make_inputs(M, N, K + 24, dtype, bias=True)
    x, w = x_wide[:, :K], w_wide[:, :K]
    assert "sm90" in kernel_of(x, w, b)
    y, z = run_fwd(x, w, b, "silu")
    z_ref, y_ref = reference(x, w, b, "silu")
    z_torch, y_torch = torch_in_dtype(x, w, b, "silu")
    assert_close_to_reference("y", y, y_ref, y_torch, dtype)
    assert_close_to_reference("preact", z, z_ref, z_torch, dtype)


def test_sm90_is_deterministic():
    x, w, b = make_inputs(1000, 1000, 1000, torch.bfloat16, bias=True)
    first, _ = run_fwd(x, w, b, "gelu_tanh")
    second, _ = run_fwd(x, w, b, "gelu_tanh")
    assert torch.equal(first, second)
