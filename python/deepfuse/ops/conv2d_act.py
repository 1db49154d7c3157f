"""conv2d_act: y = act(conv2d(x, weight) + bias + residual), forward and backward fused.

F.conv2d's semantics (stride, padding incl. "same"/"valid", dilation, groups). Kernels are implicit GEMMs
(kernels/conv2d_act.py): bias, residual and activation in the forward epilogue; backward forms
dz = dy * act'(saved) while loading tiles for dx and dW, and sums db inside the dW kernel. The residual's
gradient is dz itself, so it is materialised only when the residual needs a gradient.

Layouts: NCHW or channels_last x; the output keeps x's memory format. dtypes as linear_act.
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


def conv2d_act_ref(
    x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="none", *, residual=None
):
    """The spec in plain torch: ``act(F.conv2d(x, weight, bias, ...) + residual)``."""
    z = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        z = z + residual
    return activation_ref(z, activation)


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def resolve_padding(padding, kernel_size, dilation, stride) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding, F.conv2d's way (for "same", the odd pixel goes bottom/right)."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as in F.conv2d), got stride={stride}")
        totals = [d * (k - 1) for d, k in zip(dilation, kernel_size, strict=True)]
        return totals[0] // 2, totals[0] - totals[0] // 2, totals[1] // 2, totals[1] - totals[1] // 2
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = _pair("padding", padding)
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return ph, ph, pw, pw


def output_size(in_size, kernel_size, stride, pad, dilation) -> tuple[int, int]:
    """(OH, OW) for pad = (top, bottom, left, right)."""
    padded = (in_size[0] + pad[0] + pad[1], in_size[1] + pad[2] + pad[3])
    return tuple(
        (p - d * (k - 1) - 1) // s + 1 for p, k, s, d in zip(padded, kernel_size, stride, dilation, strict=True)
    )


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last when x is laid out that way (and not also plain-contiguous, e.g. C == 1)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ---------------------------------------------------------------------------------------------
# Backend implementations (4-D x, validated inputs; pad = (top, bottom, left, right))
# ---------------------------------------------------------------------------------------------


def _symmetric(pad):
    return pad[0] == pad[1] and pad[2] == pad[3]


def _padded_input(x, pad):
    """x and the symmetric padding to pass torch: asymmetric padding is applied by F.pad first."""
    if _symmetric(pad):
        return x, (pad[0], pad[2])
    return F.pad(x, (pad[2], pad[3], pad[0], pad[1])), (0, 0)


def _fwd_torch(x, weight, bias, residual, stride, pad, dilation, groups, activation, save_preact):
    xp, sym_pad = _padded_input(x, pad)
    z = F.conv2d(xp, weight, bias, stride, sym_pad, dilation, groups)
    if residual is not None:
        z = z + residual
    z = z.contiguous(memory_format=output_memory_format(x))
    y = activation_ref(z, activation)
    if y is z:
        y = z.clone() if save_preact else z
    return y, (z if save_preact else nothing(x))


def _conv2d_act_torch(x, weight, bias, residual, stride, pad, dilation, groups, activation):
    """The torch backend: cuDNN/oneDNN's convolution with bias, then the residual and activation, differentiable."""
    xp, sym_pad = _padded_input(x, pad)
    z = F.conv2d(xp, weight, bias, stride, sym_pad, dilation, groups)
    if residual is not None:
        z = z + residual
    return activation_ref(z.contiguous(memory_format=output_memory_format(x)), activation)


def _torch_cost(x, weight, bias, residual, stride, pad, dilation, groups, activation):
    return _cost(x, weight, _out_shape(x, weight, stride, pad, dilation), False)


def _grad_preact(grad_y, saved, activation):
    if activation == "none":
        return grad_y
    compute = torch.promote_types(grad_y.dtype, torch.float32)
    return (grad_y.to(compute) * activation_grad_ref(saved.to(compute), activation)).to(grad_y.dtype)


def _bwd_torch(
    grad_y,
    saved,
    x,
    weight,
    stride,
    pad,
    dilation,
    groups,
    activation,
    has_bias,
    need_grad_x,
    need_grad_weight,
    need_grad_residual,
):
    grad_z = _grad_preact(grad_y, saved, activation)
    xp, sym_pad = _padded_input(x, pad)
    grad_xp, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_z,
        xp,
        weight,
        None,
        list(stride),
        list(sym_pad),
        list(dilation),
        False,
        [0, 0],
        groups,
        [need_grad_x, need_grad_weight, False],
    )
    grad_x = nothing(x)
    if need_grad_x:
        grad_x = grad_xp if xp is x else grad_xp[:, :, pad[0] : pad[0] + x.shape[2], pad[2] : pad[2] + x.shape[3]]
        grad_x = grad_x.contiguous(memory_format=output_memory_format(x))
    return (
        grad_x,
        grad_weight.contiguous() if need_grad_weight else nothing(x),  # cuDNN may hand it back channels_last
        grad_z.sum((0, 2, 3)) if has_bias else nothing(x),
        _grad_residual(grad_z, grad_y, x) if need_grad_residual else nothing(x),
    )


def _grad_residual(grad_z, grad_y, x):
    """dz in x's memory format, never aliasing grad_y (custom-op outputs may not alias inputs)."""
    out = grad_z.contiguous(memory_format=output_memory_format(x))
    return out.clone() if out is grad_y else out


def _out_shape(x, weight, stride, pad, dilation):
    oh, ow = output_size(x.shape[2:], weight.shape[2:], stride, pad, dilation)
    return (x.shape[0], weight.shape[0], oh, ow)


def _fwd_triton(x, weight, bias, residual, stride, pad, dilation, groups, activation, save_preact):
    from deepfuse.kernels.conv2d_act import conv2d_act_fwd

    fmt = output_memory_format(x)
    shape = _out_shape(x, weight, stride, pad, dilation)
    y = _kernel_utils.empty_output(shape, x, fmt)
    preact = _kernel_utils.empty_output(shape, x, fmt) if save_preact else None
    conv2d_act_fwd(
        x, weight, bias, residual, y, preact, stride, (pad[0], pad[2]), dilation, groups, ACTIVATION_CODES[activation]
    )
    return y, (preact if save_preact else nothing(x))


def _bwd_operands(grad_y, saved, x, activation, need_grad_residual):
    """``(grad_y, saved, activation, grad_residual)`` for a kernel backward, in x's memory format. With a residual
    to differentiate, its gradient is dz: written once, the GEMMs then read it as grad_y with no activation."""
    fmt = output_memory_format(x)
    grad_y = grad_y.contiguous(memory_format=fmt)
    if not need_grad_residual:
        return grad_y, saved.contiguous(memory_format=fmt), activation, nothing(x)
    grad_residual = _grad_residual(_grad_preact(grad_y, saved, activation), grad_y, x)
    return grad_residual, grad_residual, "none", grad_residual


def _bwd_triton(
    grad_y,
    saved,
    x,
    weight,
    stride,
    pad,
    dilation,
    groups,
    activation,
    has_bias,
    need_grad_x,
    need_grad_weight,
    need_grad_residual,
):
    from deepfuse.kernels.conv2d_act import conv2d_act_bwd

    fmt = output_memory_format(x)
    grad_y, saved, activation, grad_residual = _bwd_operands(grad_y, saved, x, activation, need_grad_residual)
    grad_x, grad_weight, grad_bias = conv2d_act_bwd(
        grad_y,
        saved,
        x,
        weight,
        stride,
        (pad[0], pad[2]),
        dilation,
        groups,
        ACTIVATION_CODES[activation],
        has_bias,
        need_grad_x,
        need_grad_weight,
        fmt,
    )
    return (
        grad_x if grad_x is not None else nothing(x),
        grad_weight if grad_weight is not None else nothing(x),
        grad_bias if grad_bias is not None else nothing(x),
        grad_residual,
    )


def _cuda_shape(x, weight, out_shape, stride, pad, dilation, groups):
    batch, cin, H, W = x.shape
    return [
        batch,
        cin,
        H,
        W,
        weight.shape[0],
        out_shape[2],
        out_shape[3],
        weight.shape[2],
        weight.shape[3],
        stride[0],
        stride[1],
        pad[0],
        pad[2],
        dilation[0],
        dilation[1],
        groups,
    ]


def _cuda_weight(x, weight):
    """W as the cuda backend passes it: channels_last (KRSC) when x is, since the sm_90a kernels read it so; a copy of
    Cout x Cin x KH x KW elements only when W is NCHW (as nn.Conv2d creates it), none for a 1x1 W (both layouts)."""
    return (
        weight.contiguous(memory_format=torch.channels_last)
        if output_memory_format(x) == torch.channels_last
        else weight
    )


def _fwd_cuda(x, weight, bias, residual, stride, pad, dilation, groups, activation, save_preact):
    from deepfuse import _C

    fmt = output_memory_format(x)
    weight = _cuda_weight(x, weight)
    shape = _out_shape(x, weight, stride, pad, dilation)
    y = _kernel_utils.empty_output(shape, x, fmt)
    preact = _kernel_utils.empty_output(shape, x, fmt) if save_preact else nothing(x)
    bias = bias.contiguous() if bias is not None else None
    with torch.cuda.device(x.device):
        _C.conv2d_act_fwd(
            _cuda_shape(x, weight, shape, stride, pad, dilation, groups),
            pointer(x),
            list(x.stride()),
            pointer(weight),
            list(weight.stride()),
            pointer(bias),
            pointer(residual),
            list(residual.stride()) if residual is not None else [0, 0, 0, 0],
            pointer(y),
            pointer(preact),
            list(y.stride()),
            _backend.DTYPE_CODES[x.dtype],
            ACTIVATION_CODES[activation],
            torch.cuda.current_stream().cuda_stream,
        )
    return y, preact


def _bwd_cuda(
    grad_y,
    saved,
    x,
    weight,
    stride,
    pad,
    dilation,
    groups,
    activation,
    has_bias,
    need_grad_x,
    need_grad_weight,
    need_grad_residual,
):
    from deepfuse import _C

    fmt = output_memory_format(x)
    grad_y, saved, activation, grad_residual = _bwd_operands(grad_y, saved, x, activation, need_grad_residual)
    weight_format = output_memory_format(weight)
    weight = _cuda_weight(x, weight)
    grad_x = _kernel_utils.empty_output(x.shape, x, fmt) if need_grad_x else nothing(x)
    # dW in the layout of the W passed (the sm_90a wgrad stores channels_last, KRSC), returned in W's own layout.
    grad_weight = (
        _kernel_utils.empty_output(weight.shape, x, output_memory_format(weight)) if need_grad_weight else nothing(x)
    )
    grad_bias = _kernel_utils.empty_output(weight.shape[:1], x) if has_bias else nothing(x)
    shape = _cuda_shape(x, weight, grad_y.shape, stride, pad, dilation, groups)
    dtype, act = _backend.DTYPE_CODES[x.dtype], ACTIVATION_CODES[activation]
    with torch.cuda.device(x.device):
        # Scratch for the sm_90a backward (dz stored once, db's partial sums); 0 bytes on other devices and dtypes.
        workspace_bytes = _C.conv2d_act_bwd_workspace_bytes(shape, dtype, act, has_bias)
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=x.device) if workspace_bytes else None
        _C.conv2d_act_bwd(
            shape,
            pointer(grad_y),
            pointer(saved) if activation != "none" else 0,
            list(grad_y.stride()),
            pointer(x),
            list(x.stride()),
            pointer(weight),
            list(weight.stride()),
            pointer(grad_x),
            list(grad_x.stride()) if need_grad_x else [0, 0, 0, 0],
            pointer(grad_weight),
            list(grad_weight.stride()) if need_grad_weight else [0, 0, 0, 0],
            pointer(grad_bias),
            dtype,
            act,
            torch.cuda.current_stream().cuda_stream,
            workspace=pointer(workspace),
            workspace_bytes=workspace_bytes,
        )
    if need_grad_weight:
        grad_weight = grad_weight.contiguous(memory_format=weight_format)
    return grad_x, grad_weight, grad_bias, grad_residual


_FWD = {"torch": _fwd_torch, "triton": _fwd_triton, "cuda": _fwd_cuda}
_BWD = {"torch": _bwd_torch, "triton": _bwd_triton, "cuda": _bwd_cuda}


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------


def _cost(x, weight, out_shape, two_outputs):
    """Forward FLOPs and minimum bytes (x, W, b read once; one or two output-sized tensors written)."""
    out_numel = math.prod(out_shape)
    flops = 2 * out_numel * math.prod(weight.shape[1:])
    outputs = out_numel * (2 if two_outputs else 1)
    return flops, x.element_size() * (x.numel() + weight.numel() + weight.shape[0] + outputs)


def _fwd_cost(x, weight, bias, residual, stride, padding, dilation, groups, activation, save_preact, backend):
    return _cost(x, weight, _out_shape(x, weight, stride, padding, dilation), save_preact)


@fused_op("conv2d_act_fwd", cost=_fwd_cost)
def conv2d_act_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    save_preact: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, preact) for 4-D x; padding is (top, bottom, left, right); preact is empty unless save_preact."""
    return _FWD[backend](
        x, weight, bias, residual, tuple(stride), tuple(padding), tuple(dilation), groups, activation, save_preact
    )


@conv2d_act_fwd.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, activation, save_preact, backend):
    shape = _out_shape(x, weight, stride, padding, dilation)
    fmt = output_memory_format(x)
    y = torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    return y, (torch.empty(shape, device=x.device, dtype=x.dtype, memory_format=fmt) if save_preact else nothing(x))


def _bwd_cost(
    grad_y,
    saved,
    x,
    weight,
    stride,
    padding,
    dilation,
    groups,
    activation,
    has_bias,
    need_grad_x,
    need_grad_weight,
    need_grad_residual,
    backend,
):
    flops, min_bytes = _cost(x, weight, grad_y.shape, True)
    return flops * (need_grad_x + need_grad_weight), min_bytes


@fused_op("conv2d_act_bwd", cost=_bwd_cost)
def conv2d_act_bwd(
    grad_y: torch.Tensor,
    saved: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    has_bias: bool,
    need_grad_x: bool,
    need_grad_weight: bool,
    need_grad_residual: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias, grad_residual); those not asked for are empty."""
    return _BWD[backend](
        grad_y,
        saved,
        x,
        weight,
        tuple(stride),
        tuple(padding),
        tuple(dilation),
        groups,
        activation,
        has_bias,
        need_grad_x,
        need_grad_weight,
        need_grad_residual,
    )


@conv2d_act_bwd.register_fake
def _(
    grad_y,
    saved,
    x,
    weight,
    stride,
    padding,
    dilation,
    groups,
    activation,
    has_bias,
    need_grad_x,
    need_grad_weight,
    need_grad_residual,
    backend,
):
    fmt = output_memory_format(x)
    grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=fmt) if need_grad_x else nothing(x)
    grad_residual = torch.empty_like(grad_y, memory_format=fmt) if need_grad_residual else nothing(x)
    return (
        grad_x,
        weight.new_empty(weight.shape) if need_grad_weight else nothing(x),
        weight.new_empty(weight.shape[:1]) if has_bias else nothing(x),
        grad_residual,
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding, dilation, groups, activation, save_preact, backend = inputs
    y, preact = output
    if activation in NEEDS_PREACTIVATION and not save_preact:
        saved = None
    else:
        saved = preact if activation in NEEDS_PREACTIVATION else y
    ctx.save_for_backward(x, weight, saved)
    ctx.geometry = (stride, padding, dilation, groups)
    ctx.activation, ctx.has_bias, ctx.has_residual, ctx.backend = (
        activation,
        bias is not None,
        residual is not None,
        backend,
    )


def _backward(ctx, grad_y, grad_preact):
    x, weight, saved = ctx.saved_tensors
    if saved is None:
        raise RuntimeError(
            f"deepfuse::conv2d_act_fwd ran with save_preact=False, but {ctx.activation!r} needs the "
            "pre-activation for backward; call deepfuse.ops.conv2d_act, which sets it"
        )
    need_x, need_w, need_b, need_res = ctx.needs_input_grad[:4]
    grad_x, grad_w, grad_b, grad_res = conv2d_act_bwd(
        grad_y,
        saved,
        x,
        weight,
        *ctx.geometry,
        ctx.activation,
        ctx.has_bias and need_b,
        need_x,
        need_w,
        ctx.has_residual and need_res,
        ctx.backend,
    )
    return (
        grad_x if need_x else None,
        grad_w if need_w else None,
        grad_b if ctx.has_bias and need_b else None,
        grad_res if ctx.has_residual and need_res else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


conv2d_act_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Dispatch rules and the public function
# ---------------------------------------------------------------------------------------------


def _supports(backend, x, weight, *args, **kwargs):
    if backend == "torch":
        return None
    return kernel_dtype_reason("x", x)


def _preference(x, weight, *args, **kwargs):
    # Not yet measured on a GPU: Triton's implicit GEMM, then the CUDA C++ one, for the half types;
    # fp32 stays on cuDNN (torch).
    if x.dtype in (torch.float16, torch.bfloat16):
        return ("triton", "cuda", "torch")
    return ("torch",)


def _cuda_kernels(
    x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="none", *, residual=None, **_
):
    """Which _C kernels the cuda backend runs forward and backward for this call on x's device, and why."""
    from deepfuse import _C

    x = x.unsqueeze(0) if x.ndim == 3 else x
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    pad = resolve_padding(padding, weight.shape[2:], dilation, stride)
    out_shape = _out_shape(x, weight, stride, pad, dilation)
    y = torch.empty(out_shape, device="meta").contiguous(memory_format=output_memory_format(x))  # as the launcher
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, residual) if t is not None)
    weight = _cuda_weight(x, weight.detach())
    operands = [t for t in (x, weight, bias, residual) if t is not None]
    shape = _cuda_shape(x, weight, out_shape, stride, pad, dilation, groups)
    dtype, capability, act = _backend.DTYPE_CODES[x.dtype], device_capability(x.device), ACTIVATION_CODES[activation]
    layout = dict(
        x_strides=list(x.stride()),
        w_strides=list(weight.stride()),
        y_strides=list(y.stride()),
        aligned=all(t.data_ptr() % 16 == 0 for t in operands),
        bias=bias is not None,
        activation=act,
    )
    kernel, why = _C.conv2d_act_kernel_name(
        shape,
        dtype,
        capability,
        residual=residual is not None,
        preact=needs_grad and activation in NEEDS_PREACTIVATION,
        **layout,
    )
    if not needs_grad:
        return f"forward: {kernel} ({why})"
    # Backward as _bwd_cuda calls it: x's layout for dx and dy, dW in the passed W's layout (its strides are W's).
    (dgrad, dgrad_why), (wgrad, wgrad_why) = _C.conv2d_act_bwd_kernel_name(shape, dtype, capability, **layout)
    return f"forward: {kernel} ({why}); backward dx: {dgrad} ({dgrad_why}); backward dW, db: {wgrad} ({wgrad_why})"


_backend.register_op(
    _backend.OpSpec("conv2d_act", _supports, _preference, lambda x, *a, **k: x.device, cuda_kernels=_cuda_kernels)
)


def _validate(x, weight, bias, residual, groups, activation):
    check_tensor("x", x)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"x must be (batch, channels, height, width) or (channels, height, width), got shape {tuple(x.shape)}"
        )
    check_tensor("weight", weight, ndim=4)
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    in_channels, out_channels = x.shape[-3], weight.shape[0]
    if in_channels % groups or out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide both x's channels ({in_channels}) and weight's out_channels ({out_channels})"
        )
    if weight.shape[1] * groups != in_channels:
        raise ValueError(
            f"weight must have shape (out_channels, in_channels / groups = {in_channels // groups}, "
            f"kH, kW) for x with {in_channels} channels, got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != out_channels:
            raise ValueError(f"bias must have shape (out_channels={out_channels},), got {tuple(bias.shape)}")
    if residual is not None:
        check_tensor("residual", residual)
    check_activation(activation)


@accepts_cupy
def conv2d_act(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    activation: str = "none",
    *,
    residual: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """y = act(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual), fused, differentiable.

    Args:
        x: (batch, in_channels, H, W) or (in_channels, H, W); NCHW or channels_last memory.
        weight: (out_channels, in_channels / groups, kH, kW)
        bias: (out_channels,) or None
        stride, dilation: int or pair; padding: int, pair, "same" or "valid".
        groups: divides in_channels and out_channels (1, depthwise and anything between).
        activation: one of deepfuse.ops.ACTIVATIONS.
        residual: None or a tensor of the output's shape, added before the activation.
        backend: "torch", "triton", "cuda" or None (automatic).

    Returns: (batch, out_channels, OH, OW) in x's memory format and dtype (autocast dtype under autocast).

    Equivalent PyTorch: conv2d_act_ref
    """
    _validate(x, weight, bias, residual, groups, activation)
    unbatched = x.ndim == 3
    if unbatched:
        x = x.unsqueeze(0)
        residual = residual.unsqueeze(0) if residual is not None else None
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride and dilation must be >= 1, got stride={stride}, dilation={dilation}")
    pad = resolve_padding(padding, weight.shape[2:], dilation, stride)
    out_shape = _out_shape(x, weight, stride, pad, dilation)
    if out_shape[2] < 1 or out_shape[3] < 1:
        raise ValueError(
            f"weight's kernel {tuple(weight.shape[2:])} (dilation {dilation}) is larger than the padded "
            f"input {(x.shape[2] + pad[0] + pad[1], x.shape[3] + pad[2] + pad[3])}"
        )
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"residual must have the output's shape {out_shape}, got {tuple(residual.shape)}")
    x, weight, bias, residual = autocast_inputs(x, weight, bias, residual)
    check_same_dtype_and_device("x", x, weight=weight, bias=bias, residual=residual)
    chosen = _backend.choose_backend("conv2d_act", backend, x, weight)
    if chosen == "torch":  # torch's own differentiable ops: its autograd, traced natively by torch.compile
        args = (x, weight, bias, residual, stride, pad, dilation, groups, activation)
        y = torch_path("conv2d_act_fwd", _torch_cost, _conv2d_act_torch, *args)
        return y.squeeze(0) if unbatched else y
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual))
    y, _ = conv2d_act_fwd(
        x,
        weight,
        bias,
        residual,
        list(stride),
        list(pad),
        list(dilation),
        groups,
        activation,
        needs_grad and activation in NEEDS_PREACTIVATION,
        chosen,
    )
    return y.squeeze(0) if unbatched else y
