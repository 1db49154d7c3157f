"""linear_act backward on sm_90a (csrc/linear_act.cu's grad_preact kernel, then the CUTLASS dgrad and wgrad GEMMs of
csrc/linear_act_bwd_sm90.cu), called through deepfuse._C directly and through the public op: against the float64
specification and against the WMMA kernels the same device runs without the workspace (the old path). Needs a
compute-capability 9.0 GPU (H100/H200); elsewhere these tests are skipped."""

import pytest
import torch
import torch.nn.functional as F

import deepfuse
from deepfuse.ops.activations import (
    ACTIVATION_CODES,
    ACTIVATIONS,
    NEEDS_PREACTIVATION,
    activation_grad_ref,
    activation_ref,
)
from tests.tolerances import ATOL, assert_close_to_reference, max_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="the sm_90a kernels run on compute capability 9.0 only",
    ),
]

DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2}
# (M, N, K): N and K multiples of 8 (TMA's 16-byte strides), M anything (it is wgrad's reduction dimension): single
# rows, partial 128 x 256 tiles, one pipeline stage of K' and many, more tiles than SMs.
SHAPES = [(1, 8, 8), (7, 136, 72), (129, 264, 520), (1000, 1000, 1000), (2048, 4096, 512), (4099, 512, 264)]
# Shapes the sm_90a path refuses (N or K not a multiple of 8): the WMMA kernels run them.
REFUSED_SHAPES = [(33, 1001, 64), (65, 72, 1001)]


def _C():
    from deepfuse import _C

    return _C


def make_inputs(M, N, K, dtype, activation, bias, seed):
    """x (M, K), w (N, K), dy (M, N), saved (z, or y for relu/leaky_relu) as the forward leaves them, in dtype."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(M, K, device="cuda", dtype=dtype, generator=g)
    w = (torch.randn(N, K, device="cuda", dtype=dtype, generator=g) / K**0.5).to(dtype)
    b = torch.randn(N, device="cuda", dtype=dtype, generator=g) if bias else None
    dy = torch.randn(M, N, device="cuda", dtype=dtype, generator=g)
    z = F.linear(x, w, b)
    saved = z if activation in NEEDS_PREACTIVATION else activation_ref(z, activation)
    return x, w, dy, saved


def kernels_of(x, w, dy, saved, activation, bias):
    """The GEMM kernels _C picks for run_bwd's call, as _C.linear_act_bwd_kernel_name reports them."""
    pointers = [t.data_ptr() for t in (x, w, dy, saved)]
    kernels, _ = _C().linear_act_bwd_kernel_name(
        x.shape[0],
        w.shape[0],
        x.shape[1],
        DTYPE_CODES[x.dtype],
        90,
        activation=ACTIVATION_CODES[activation],
        x_stride_m=x.stride(0),
        w_stride_n=w.stride(0),
        aligned=all(p % 16 == 0 for p in pointers),
        bias=bias,
    )
    return kernels


def misaligned_copy(t):
    """t's values at an address 2 bytes past a 16-byte boundary: TMA cannot take it, so _C runs the WMMA kernels."""
    storage = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
    return storage[1:].view_as(t).copy_(t)


def run_bwd(x, w, dy, saved, activation, bias, want=("x", "w", "b")):
    """(grad_x, grad_w, grad_b) from _C.linear_act_bwd, each NaN-poisoned first (None when not wanted), with the
    workspace _C.linear_act_bwd_workspace_bytes asks for, as deepfuse's cuda backend passes it."""
    M, K = x.shape
    N = w.shape[0]
    dtype = DTYPE_CODES[x.dtype]
    act = ACTIVATION_CODES[activation]

    def poisoned(shape, name):
        return torch.full(shape, float("nan"), device="cuda", dtype=x.dtype) if name in want else None

    gx, gw, gb = poisoned((M, K), "x"), poisoned((N, K), "w"), poisoned((N,), "b") if bias else None
    nbytes = _C().linear_act_bwd_workspace_bytes(M, N, dtype, act, gb is not None)
    scratch = torch.full((nbytes,), 0xFF, device="cuda", dtype=torch.uint8)  # stale bits must not leak through
    _C().linear_act_bwd(
        dy.data_ptr(),
        saved.data_ptr(),
        x.data_ptr(),
        x.stride(0),
        x.stride(1),
        w.data_ptr(),
        w.stride(0),
        w.stride(1),
        0 if gx is None else gx.data_ptr(),
        0 if gw is None else gw.data_ptr(),
        0 if gb is None else gb.data_ptr(),
        M,
        N,
        K,
        dtype,
        act,
        torch.cuda.current_stream().cuda_stream,
        workspace=scratch.data_ptr() if nbytes else 0,
        workspace_bytes=nbytes,
    )
    torch.cuda.synchronize()
    return gx, gw, gb


def reference(x, w, dy, saved, activation):
    """(grad_x, grad_w, grad_b) in float64 from the saved tensor as stored: the specification."""
    dz = dy.double() * activation_grad_ref(saved.double(), activation)
    return dz @ w.double(), dz.T @ x.double(), dz.sum(0)


def torch_in_dtype(x, w, dy, saved, activation):
    """The same as torch computes it in the inputs' dtype (dz in fp32, rounded once): the error yardstick."""
    dz = (dy.float() * activation_grad_ref(saved.float(), activation)).to(dy.dtype)
    return dz @ w, dz.T @ x, dz.sum(0)


def check_against_spec_and_old_path(x, w, dy, saved, activation, bias, where):
    """The sm_90a backward, and the WMMA one (the old path, on 2-byte-misaligned copies of x and w), against the
    float64 specification and against each other."""
    dtype = x.dtype
    assert "sm90" in kernels_of(x, w, dy, saved, activation, bias), where
    new = run_bwd(x, w, dy, saved, activation, bias)
    xm, wm = misaligned_copy(x), misaligned_copy(w)
    assert "wmma" in kernels_of(xm, wm, dy, saved, activation, bias), where
    old = run_bwd(xm, wm, dy, saved, activation, bias)
    spec = reference(x, w, dy, saved, activation)
    yardstick = torch_in_dtype(x, w, dy, saved, activation)
    for name, value, value_old, ref, tv in zip(("grad_x", "grad_w", "grad_b"), new, old, spec, yardstick, strict=True):
        if value is None:
            continue
        assert_close_to_reference(f"{name} sm_90a ({where})", value, ref, tv, dtype)
        assert_close_to_reference(f"{name} WMMA ({where})", value_old, ref, tv, dtype)
        # Both accumulate in fp32 and round once: they may differ by about what torch's own rounding errs, no more.
        bound = 2 * max_error(tv, ref) + ATOL[dtype]
        assert max_error(value, value_old) <= bound, f"{name} ({where}): the two paths differ by more than {bound}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sm90_bwd_matches_reference_and_the_wmma_kernels(activation, bias, dtype):
    for M, N, K in SHAPES:
        x, w, dy, saved = make_inputs(M, N, K, dtype, activation, bias, seed=M + N + K)
        check_against_spec_and_old_path(x, w, dy, saved, activation, bias, f"{activation} {dtype} M={M} N={N} K={K}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_shapes_the_sm90_path_refuses_run_on_the_wmma_kernels(dtype):
    for M, N, K in REFUSED_SHAPES:
        x, w, dy, saved = make_inputs(M, N, K, dtype, "silu", True, seed=M)
        assert "wmma" in kernels_of(x, w, dy, saved, "silu", True), (M, N, K)
        spec = reference(x, w, dy, saved, "silu")
        yardstick = torch_in_dtype(x, w, dy, saved, "silu")
        for name, value, ref, tv in zip(
            ("grad_x", "grad_w", "grad_b"), run_bwd(x, w, dy, saved, "silu", True), spec, yardstick, strict=True
        ):
            assert_close_to_reference(f"{name} M={M} N={N} K={K}", value, ref, tv, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sm90_bwd_takes_padded_row_strides(dtype):
    """x and w as column slices of wider tensors (row strides K + 24, 16-byte multiples): TMA strides them."""
    M, N, K = 257, 264, 200
    x_wide, w_wide, dy, _ = make_inputs(M, N, K + 24, dtype, "gelu", True, seed=3)
    x, w = x_wide[:, :K], w_wide[:, :K]
    saved = F.linear(x, w)
    check_against_spec_and_old_path(x, w, dy, saved, "gelu", True, "padded strides")


@pytest.mark.parametrize("want", [("x",), ("w",), ("b",), ("w", "b")], ids="+".join)
def test_sm90_bwd_writes_only_the_gradients_asked_for(want):
    """A frozen weight (dx alone), a frozen input (dW alone), db alone: each runs and is right; the others stay
    untouched (None here: their pointers are 0)."""
    x, w, dy, saved = make_inputs(300, 264, 136, torch.bfloat16, "tanh", True, seed=5)
    full = run_bwd(x, w, dy, saved, "tanh", True)
    part = run_bwd(x, w, dy, saved, "tanh", True, want=want)
    for name, value, value_full in zip("xwb", part, full, strict=True):
        if name in want:
            assert torch.equal(value, value_full), name
        else:
            assert value is None


def test_sm90_bwd_is_deterministic():
    x, w, dy, saved = make_inputs(1000, 1000, 1000, torch.bfloat16, "gelu_tanh", True, seed=7)
    first = run_bwd(x, w, dy, saved, "gelu_tanh", True)
    second = run_bwd(x, w, dy, saved, "gelu_tanh", True)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_public_op_backward_on_the_cuda_backend_matches_the_spec(dtype):
    """deepfuse.linear_act(backend="cuda") through autograd: the op passes the workspace, so the sm_90a backward
    runs (explain says so); every gradient against the float64 specification."""
    g = torch.Generator(device="cuda").manual_seed(11)
    x = torch.randn(3, 129, 264, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    w = (torch.randn(520, 264, device="cuda", dtype=dtype, generator=g) / 264**0.5).requires_grad_()
    b = torch.randn(520, device="cuda", dtype=dtype, generator=g, requires_grad=True)
    dy = torch.randn(3, 129, 520, device="cuda", dtype=dtype, generator=g)
    assert "linear_act_dgrad_sm90_kernel" in str(deepfuse.explain("linear_act", x, w, b, "silu", backend="cuda"))
    deepfuse.linear_act(x, w, b, "silu", backend="cuda").backward(dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    deepfuse.ops.linear_act_ref(x64, w64, b64, "silu").backward(dy.double())
    xt, wt, bt = (t.detach().clone().requires_grad_() for t in (x, w, b))
    deepfuse.ops.linear_act_ref(xt, wt, bt, "silu").backward(dy)
    for name, kernel, spec, yardstick in (("x", x, x64, xt), ("w", w, w64, wt), ("b", b, b64, bt)):
        assert_close_to_reference(f"grad {name}", kernel.grad, spec.grad, yardstick.grad, dtype)
