"""linear_act: y = act(x @ weight.T + bias), forward and backward fused.

Forward: one GEMM with bias and activation applied to the fp32 accumulator. Backward: dx = dz @ W and
dW = dz^T @ x with dz = dy * act'(saved) formed while loading tiles (never written), db summed inside
the dW kernel; on a 9.0 device the cuda backend stores dz once (in a workspace it allocates) for its sm_90a
TMA + wgmma GEMMs. Saved for backward: x, W and z (y for relu/leaky_relu, whose sign survives rounding).

dtypes: float32, float16, bfloat16 on every backend (fp32 accumulation), float64 on torch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepfuse import backend as _backend
from deepfuse.kernels import utils as _kernel_utils
from deepfuse.ops._dispatch import fused_op, torch_path
from deepfuse.ops._interop import accepts_cupy
from deepfuse.ops._shared import autocast_inputs, device_capability, nothing, pointer
from deepfuse.ops._validation import check_same_dtype_and_device, check_tensor, kernel_dtype_reason
from deepfuse.ops.activations import (
    ACTIVATION_CODES,
    NEEDS_PREACTIVATION,
    activation_grad_ref,
    activation_ref,
    check_activation,
)


def linear_act_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """The spec: ``act(F.linear(x, weight, bias))`` in plain torch (CPU-safe, differentiable)."""
    return activation_ref(F.linear(x, weight, bias), activation)


# ---------------------------------------------------------------------------------------------
# Backend implementations (2-D x, validated inputs)
# ---------------------------------------------------------------------------------------------


def _fwd_torch(x, weight, bias, activation, save_preact):
    z = F.linear(x, weight, bias)
    y = activation_ref(z, activation)
    if y is z:  # custom ops may not return an output aliasing another
        y = z.clone() if save_preact else z
    return y, (z if save_preact else nothing(x))


def _bwd_torch(grad_y, saved, x, weight, activation, has_bias, need_grad_x, need_grad_weight):
    if activation == "none":
        grad_z = grad_y
    else:
        # fp32 math for the half types (as the kernels do), float64 stays float64.
        compute = torch.promote_types(grad_y.dtype, torch.float32)
        grad_z = (grad_y.to(compute) * activation_grad_ref(saved.to(compute), activation)).to(grad_y.dtype)
    grad_x = grad_z @ weight if need_grad_x else nothing(x)
    grad_weight = grad_z.t() @ x if need_grad_weight else nothing(x)
    grad_bias = grad_z.sum(0) if has_bias else nothing(x)
    return grad_x, grad_weight, grad_bias


def _fwd_triton(x, weight, bias, activation, save_preact):
    from deepfuse.kernels.linear_act import linear_act_fwd

    return linear_act_fwd(x, weight, bias, ACTIVATION_CODES[activation], save_preact)


def _bwd_triton(grad_y, saved, x, weight, activation, has_bias, need_grad_x, need_grad_weight):
    from deepfuse.kernels.linear_act import linear_act_bwd

    return linear_act_bwd(
        grad_y, saved, x, weight, ACTIVATION_CODES[activation], has_bias, need_grad_x, need_grad_weight
    )


def _fwd_cuda(x, weight, bias, activation, save_preact):
    from deepfuse import _C

    M, K = x.shape
    N = weight.shape[0]
    y = _kernel_utils.empty_output((M, N), x)
    preact = _kernel_utils.empty_output((M, N) if save_preact else (0,), x)
    bias = bias.contiguous() if bias is not None else None
    with torch.cuda.device(x.device):
        _C.linear_act_fwd(
            pointer(x),
            x.stride(0),
            x.stride(1),
            pointer(weight),
            weight.stride(0),
            weight.stride(1),
            pointer(bias),
            pointer(y),
            pointer(preact),
            M,
            N,
            K,
            _backend.DTYPE_CODES[x.dtype],
            ACTIVATION_CODES[activation],
            torch.cuda.current_stream().cuda_stream,
        )
    return y, preact


def _bwd_cuda(grad_y, saved, x, weight, activation, has_bias, need_grad_x, need_grad_weight):
    from deepfuse import _C

    M, K = x.shape
    N = weight.shape[0]
    grad_y = grad_y.contiguous()
    saved = saved.contiguous()
    grad_x = _kernel_utils.empty_output((M, K), x) if need_grad_x else nothing(x)
    grad_weight = _kernel_utils.empty_output((N, K), x) if need_grad_weight else nothing(x)
    grad_bias = _kernel_utils.empty_output((N,), x) if has_bias else nothing(x)
    dtype, act = _backend.DTYPE_CODES[x.dtype], ACTIVATION_CODES[activation]
    with torch.cuda.device(x.device):
        # Scratch for the sm_90a backward (dz stored once, db's partial sums); 0 bytes on other devices and dtypes.
        workspace_bytes = _C.linear_act_bwd_workspace_bytes(M, N, dtype, act, has_bias)
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=x.device) if workspace_bytes else None
        _C.linear_act_bwd(
            pointer(grad_y),
            pointer(saved),
            pointer(x),
            x.stride(0),
            x.stride(1),
            pointer(weight),
            weight.stride(0),
            weight.stride(1),
            pointer(grad_x),
            pointer(grad_weight),
            pointer(grad_bias) if has_bias else 0,
            M,
            N,
            K,
            dtype,
            act,
            torch.cuda.current_stream().cuda_stream,
            pointer(workspace),
            workspace_bytes,
        )
    return grad_x, grad_weight, grad_bias


_FWD = {"torch": _fwd_torch, "triton": _fwd_triton, "cuda": _fwd_cuda}
_BWD = {"torch": _bwd_torch, "triton": _bwd_triton, "cuda": _bwd_cuda}
LINEAR_ACT_BACKWARD = _BWD  # each backend's (grad_x, grad_weight, grad_bias); the LSTM's weight gradients use it


# ---------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile, with fake (meta) implementations and autograd
# ---------------------------------------------------------------------------------------------


def _fwd_cost(x, weight, bias, activation, save_preact, backend):
    M, K = x.shape
    N = weight.shape[0]
    outputs = M * N * (2 if save_preact else 1)
    return 2 * M * N * K, x.element_size() * (M * K + N * K + N + outputs)


@fused_op("linear_act_fwd", cost=_fwd_cost)
def linear_act_fwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str, save_preact: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, preact) for 2-D x; preact is (M, N) when save_preact, else empty."""
    return _FWD[backend](x, weight, bias, activation, save_preact)


@linear_act_fwd.register_fake
def _(x, weight, bias, activation, save_preact, backend):
    M, N = x.shape[0], weight.shape[0]
    return x.new_empty((M, N)), x.new_empty((M, N) if save_preact else (0,))


def _bwd_cost(grad_y, saved, x, weight, activation, has_bias, need_grad_x, need_grad_weight, backend):
    M, K = x.shape
    N = weight.shape[0]
    flops = 2 * M * N * K * (need_grad_x + need_grad_weight)
    return flops, x.element_size() * (2 * M * N + M * K + N * K + N)  # dy, saved, x or dx, W or dW, db


@fused_op("linear_act_bwd", cost=_bwd_cost)
def linear_act_bwd(
    grad_y: torch.Tensor,
    saved: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    activation: str,
    has_bias: bool,
    need_grad_x: bool,
    need_grad_weight: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias); those not asked for are empty."""
    return _BWD[backend](grad_y, saved, x, weight, activation, has_bias, need_grad_x, need_grad_weight)


@linear_act_bwd.register_fake
def _(grad_y, saved, x, weight, activation, has_bias, need_grad_x, need_grad_weight, backend):
    return (
        x.new_empty(x.shape) if need_grad_x else nothing(x),
        weight.new_empty(weight.shape) if need_grad_weight else nothing(x),
        weight.new_empty(weight.shape[:1]) if has_bias else nothing(x),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, save_preact, backend = inputs
    y, preact = output
    if activation in NEEDS_PREACTIVATION and not save_preact:
        saved = None  # backward then refuses with a clear error: the pre-activation was not kept
    else:
        saved = preact if activation in NEEDS_PREACTIVATION else y
    ctx.save_for_backward(x, weight, saved)
    ctx.activation, ctx.has_bias, ctx.backend = activation, bias is not None, backend


def _backward(ctx, grad_y, grad_preact):
    x, weight, saved = ctx.saved_tensors
    if saved is None:
        raise RuntimeError(
            f"deepfuse::linear_act_fwd ran with save_preact=False, but {ctx.activation!r} needs the "
            "pre-activation for backward; call deepfuse.ops.linear_act, which sets it"
        )
    need_grad_x, need_grad_weight, need_grad_bias = ctx.needs_input_grad[:3]
    grad_x, grad_weight, grad_bias = linear_act_bwd(
        grad_y,
        saved,
        x,
        weight,
        ctx.activation,
        ctx.has_bias and need_grad_bias,
        need_grad_x,
        need_grad_weight,
        ctx.backend,
    )
    return (
        grad_x if need_grad_x else None,
        grad_weight if need_grad_weight else None,
        grad_bias if ctx.has_bias and need_grad_bias else None,
        None,
        None,
        None,
    )


linear_act_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Dispatch rules and the public function
# ---------------------------------------------------------------------------------------------


def _supports(backend, x, weight, bias=None, activation="none"):
    if backend == "torch":
        return None
    return kernel_dtype_reason("x", x)


def _preference(x, weight, bias=None, activation="none"):
    # A simple rule until measured tables exist: Triton's autotuned tensor-core GEMM for fp16/bf16,
    # then the CUDA C++ kernel. fp32 stays on cuBLAS (torch): our fp32 kernels compute exact fp32
    # products and are not expected to beat cuBLAS there. (Not yet measured on the GPU.)
    if x.dtype in (torch.float16, torch.bfloat16):
        return ("triton", "cuda", "torch")
    return ("torch",)


def _cuda_kernels(x, weight, bias=None, activation="none"):
    """Which _C kernels the cuda backend runs forward and backward for this call on x's device, and why."""
    from deepfuse import _C

    capability = device_capability(x.device)
    M, K, N = math.prod(x.shape[:-1]), x.shape[-1], weight.shape[0]
    x = x.reshape(M, K)  # what linear_act passes: a view, or a copy where no view exists
    pointers = [x.data_ptr(), weight.data_ptr()] + ([] if bias is None else [bias.data_ptr()])
    layout = dict(
        x_stride_m=x.stride(0),
        x_stride_k=x.stride(1),
        w_stride_n=weight.stride(0),
        w_stride_k=weight.stride(1),
        aligned=all(p % 16 == 0 for p in pointers),
        bias=bias is not None,
    )
    dtype, act = _backend.DTYPE_CODES[x.dtype], ACTIVATION_CODES[activation]
    forward = _C.linear_act_kernel_name(M, N, K, dtype, capability, **layout)
    backward = _C.linear_act_bwd_kernel_name(M, N, K, dtype, capability, activation=act, **layout)
    return f"forward: {forward[0]} ({forward[1]}); backward: {backward[0]} ({backward[1]})"


_backend.register_op(
    _backend.OpSpec("linear_act", _supports, _preference, lambda x, *a, **k: x.device, cuda_kernels=_cuda_kernels)
)


def _torch_cost(x, weight, bias, activation):
    M, K, N = math.prod(x.shape[:-1]), x.shape[-1], weight.shape[0]
    return 2 * M * N * K, x.element_size() * (M * K + N * K + N + M * N)


def _validate(x, weight, bias, activation):
    check_tensor("x", x, min_ndim=1)
    check_tensor("weight", weight, ndim=2)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"weight must have shape (out_features, in_features={x.shape[-1]}) to match x's last "
            f"dimension, got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have shape (out_features={weight.shape[0]},), got {tuple(bias.shape)}")
    check_activation(activation)


@accepts_cupy
def linear_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """y = act(x @ weight.T + bias), fused, differentiable.

    Args:
        x: (..., in_features)
        weight: (out_features, in_features)
        bias: (out_features,) or None
        activation: one of deepfuse.ops.ACTIVATIONS ("none", "relu", "leaky_relu" (slope 0.01), "gelu" (erf),
            "gelu_tanh", "silu", "sigmoid", "tanh")
        backend: "torch", "triton", "cuda" or None (automatic; see deepfuse.explain("linear_act", ...)).

    Returns: (..., out_features), x's dtype (the autocast dtype under torch.autocast).
    Accepts cupy arrays for x, weight, bias and then returns a cupy array.

    Equivalent PyTorch: linear_act_ref
    """
    _validate(x, weight, bias, activation)
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_same_dtype_and_device("x", x, weight=weight, bias=bias)
    chosen = _backend.choose_backend("linear_act", backend, x, weight, bias, activation)
    if chosen == "torch":  # torch's own differentiable ops: its autograd, traced natively by torch.compile
        return torch_path("linear_act_fwd", _torch_cost, linear_act_ref, x, weight, bias, activation)
    in_features, out_features = weight.shape[1], weight.shape[0]
    x2d = x.reshape(math.prod(x.shape[:-1]), in_features)  # not -1: ambiguous when in_features == 0
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    y, _ = linear_act_fwd(x2d, weight, bias, activation, needs_grad and activation in NEEDS_PREACTIVATION, chosen)
    return y.reshape(*x.shape[:-1], out_features)
