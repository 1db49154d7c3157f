"""Triton kernels for linear_act: y = act(x @ W^T + b), forward and backward.

Forward is one tiled GEMM with bias and activation applied to the fp32 accumulator before the single
cast on store. Backward never writes dz = dy * act'(saved): both backward GEMMs form it while loading
their tiles — dx = dz @ W and dW = dz^T @ x — and the dW programs of the first K-column also sum
db = sum_m dz. ``saved`` is z (pre-activation), except for relu/leaky_relu, which save y.

Layouts: x (M, K) and W (N, K) with any strides; outputs contiguous. dtypes fp32/fp16/bf16, fp32
accumulation. fp32 dots are IEEE unless torch allows TF32 for matmuls.

Hopper (capability 9.x): each GEMM has a twin that loads its operand tiles with TMA (host tensor descriptors) and
runs a tile loop, so one kernel is plain (a program per tile), persistent (a program per SM) or warp-specialised
(a TMA producer warpgroup, two wgmma consumer warpgroups) as its autotune config says (gemm_common.TMA_SHAPES).
The launchers take it for fp16/bf16 and TF32 when every operand is TMA-ready (last dim contiguous, 16-byte
aligned base and row stride); otherwise, and for IEEE fp32 (FMA dots), the pointer kernels.
"""

import torch
import triton
import triton.language as tl

from . import utils
from .activations import apply_activation
from .gemm_common import (
    dot_flags,
    gemm_autotune,
    grad_preact,
    grouped_tile,
    hopper_device,
    launch_tma,
    load_grad_preact,
    mma,
    num_sms,
    tensor_descriptor,
    tma_autotune,
    tma_grid,
    tma_ready,
)


@gemm_autotune(key=["M", "N", "K", "ACTIVATION", "HAS_BIAS"])
@triton.jit
def _linear_act_fwd_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, y_ptr, preact_ptr,
    # sizes
    M, N, K,
    # strides
    stride_xm, stride_xk, stride_wn, stride_wk,
    # meta-parameters
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PREACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_m, pid_n = grouped_tile(tl.program_id(0).to(tl.int64), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn,
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = mma(a, b, acc, DOT_PRECISION, UPCAST_DOT)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_offsets = offs_m[:, None] * N + offs_n[None, :]
    out_mask = mask_m[:, None] & mask_n[None, :]
    if SAVE_PREACT:
        tl.store(preact_ptr + out_offsets, acc.to(preact_ptr.dtype.element_ty), mask=out_mask)
    y = apply_activation(acc, ACTIVATION)
    tl.store(y_ptr + out_offsets, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@gemm_autotune(key=["M", "N", "K", "ACTIVATION"])
@triton.jit
def _linear_act_bwd_dx_kernel(
    # pointers: dy and saved are (M, N) contiguous; dx is (M, K) contiguous
    dy_ptr, saved_ptr, w_ptr, dx_ptr,
    # sizes
    M, N, K,
    # strides of W (N, K)
    stride_wn, stride_wk,
    # meta-parameters (BLOCK_N tiles dx's K columns; BLOCK_K tiles the reduction over N)
    ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_m, pid_k = grouped_tile(tl.program_id(0).to(tl.int64), tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_k = offs_k < K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_K):
        offs_n = n0 + tl.arange(0, BLOCK_K)
        mask_n = offs_n < N
        dz = load_grad_preact(
            dy_ptr, saved_ptr, offs_m[:, None] * N + offs_n[None, :], mask_m[:, None] & mask_n[None, :], ACTIVATION
        )
        w = tl.load(
            w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
            mask=mask_n[:, None] & mask_k[None, :],
            other=0.0,
        )
        acc = mma(dz, w, acc, DOT_PRECISION, UPCAST_DOT)

    tl.store(
        dx_ptr + offs_m[:, None] * K + offs_k[None, :],
        acc.to(dx_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_k[None, :],
    )


@gemm_autotune(key=["M", "N", "K", "ACTIVATION", "HAS_BIAS"])
@triton.jit
def _linear_act_bwd_dw_kernel(
    # pointers: dy and saved are (M, N) contiguous; dw is (N, K) contiguous; db is (N,)
    dy_ptr, saved_ptr, x_ptr, dw_ptr, db_ptr,
    # sizes
    M, N, K,
    # strides of x (M, K)
    stride_xm, stride_xk,
    # meta-parameters (BLOCK_M tiles dW's N rows, BLOCK_N its K columns, BLOCK_K the reduction over M)
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_k_tiles = tl.maximum(tl.cdiv(K, BLOCK_N), 1)  # one column of programs even when K == 0, for db
    pid_n, pid_k = grouped_tile(tl.program_id(0).to(tl.int64), tl.cdiv(N, BLOCK_M), num_k_tiles, GROUP_M)
    offs_n = pid_n * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    mask_k = offs_k < K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_K):
        offs_m = m0 + tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        # dz^T tile (BLOCK_M rows of n, BLOCK_K columns of m)
        dz_t = load_grad_preact(
            dy_ptr, saved_ptr, offs_m[None, :] * N + offs_n[:, None], mask_n[:, None] & mask_m[None, :], ACTIVATION
        )
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :],
            other=0.0,
        )
        acc = mma(dz_t, x, acc, DOT_PRECISION, UPCAST_DOT)
        if HAS_BIAS:
            db += tl.sum(dz_t.to(tl.float32), axis=1)

    tl.store(
        dw_ptr + offs_n[:, None] * K + offs_k[None, :],
        acc.to(dw_ptr.dtype.element_ty),
        mask=mask_n[:, None] & mask_k[None, :],
    )
    if HAS_BIAS:
        # Every K-column of programs summed the same dz; the first one writes it.
        tl.store(db_ptr + offs_n, db.to(db_ptr.dtype.element_ty), mask=mask_n & (pid_k == 0))


@tma_autotune(
    key=["M", "N", "K", "ACTIVATION", "HAS_BIAS"], x_desc=("BLOCK_M", "BLOCK_K"), w_desc=("BLOCK_N", "BLOCK_K")
)
@triton.jit
def _linear_act_fwd_tma_kernel(
    # descriptors of x (M, K) and W (N, K); pointers
    x_desc, w_desc, bias_ptr, y_ptr, preact_ptr,
    # sizes
    M, N, K,
    # meta-parameters (PERSISTENT only sizes the grid)
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PREACT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(
        tl.program_id(0), num_m * num_n, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        pid_m, pid_n = grouped_tile(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):  # TMA fills the tails past M, N and K with zeros
            a = x_desc.load([pid_m * BLOCK_M, k0])
            b = w_desc.load([pid_n * BLOCK_N, k0])
            acc = mma(a, b.T, acc, DOT_PRECISION, UPCAST_DOT)

        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        out_offsets = offs_m[:, None] * N + offs_n[None, :]
        out_mask = (offs_m < M)[:, None] & mask_n[None, :]
        if SAVE_PREACT:
            tl.store(preact_ptr + out_offsets, acc.to(preact_ptr.dtype.element_ty), mask=out_mask)
        y = apply_activation(acc, ACTIVATION)
        tl.store(y_ptr + out_offsets, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@tma_autotune(
    key=["M", "N", "K", "ACTIVATION"],
    dy_desc=("BLOCK_M", "BLOCK_K"),
    saved_desc=("BLOCK_M", "BLOCK_K"),
    w_desc=("BLOCK_K", "BLOCK_N"),
)
@triton.jit
def _linear_act_bwd_dx_tma_kernel(
    # descriptors of dy and saved (M, N) and W (N, K); dx (M, K) contiguous
    dy_desc, saved_desc, w_desc, dx_ptr,
    # sizes
    M, N, K,
    # meta-parameters (BLOCK_N tiles dx's K columns; BLOCK_K tiles the reduction over N)
    ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_m = tl.cdiv(M, BLOCK_M)
    num_k = tl.cdiv(K, BLOCK_N)
    for tile in tl.range(
        tl.program_id(0), num_m * num_k, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        pid_m, pid_k = grouped_tile(tile, num_m, num_k, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_K):
            dz = dy_desc.load([pid_m * BLOCK_M, n0])
            if ACTIVATION != 0:
                dz = grad_preact(dz, saved_desc.load([pid_m * BLOCK_M, n0]), ACTIVATION)
            w = w_desc.load([n0, pid_k * BLOCK_N])
            acc = mma(dz, w, acc, DOT_PRECISION, UPCAST_DOT)

        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_k = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
        tl.store(
            dx_ptr + offs_m[:, None] * K + offs_k[None, :],
            acc.to(dx_ptr.dtype.element_ty),
            mask=(offs_m < M)[:, None] & (offs_k < K)[None, :],
        )


@tma_autotune(
    key=["M", "N", "K", "ACTIVATION", "HAS_BIAS"],
    dy_desc=("BLOCK_K", "BLOCK_M"),
    saved_desc=("BLOCK_K", "BLOCK_M"),
    x_desc=("BLOCK_K", "BLOCK_N"),
)
@triton.jit
def _linear_act_bwd_dw_tma_kernel(
    # descriptors of dy and saved (M, N) and x (M, K); dw (N, K) contiguous; db (N,)
    dy_desc, saved_desc, x_desc, dw_ptr, db_ptr,
    # sizes
    M, N, K,
    # meta-parameters (BLOCK_M tiles dW's N rows, BLOCK_N its K columns, BLOCK_K the reduction over M)
    ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_n = tl.cdiv(N, BLOCK_M)
    num_k = tl.cdiv(K, BLOCK_N)
    for tile in tl.range(
        tl.program_id(0), num_n * num_k, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        pid_n, pid_k = grouped_tile(tile, num_n, num_k, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        db = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_K):
            dz = dy_desc.load([m0, pid_n * BLOCK_M])  # (BLOCK_K rows of m, BLOCK_M columns of n)
            if ACTIVATION != 0:
                dz = grad_preact(dz, saved_desc.load([m0, pid_n * BLOCK_M]), ACTIVATION)
            x = x_desc.load([m0, pid_k * BLOCK_N])
            acc = mma(dz.T, x, acc, DOT_PRECISION, UPCAST_DOT)
            if HAS_BIAS:
                db += tl.sum(dz.to(tl.float32), axis=0)

        offs_n = pid_n * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_k = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        tl.store(
            dw_ptr + offs_n.to(tl.int64)[:, None] * K + offs_k[None, :],
            acc.to(dw_ptr.dtype.element_ty),
            mask=mask_n[:, None] & (offs_k < K)[None, :],
        )
        if HAS_BIAS:
            # Every K-column of tiles summed the same dz; the first one writes it.
            tl.store(db_ptr + offs_n, db.to(db_ptr.dtype.element_ty), mask=mask_n & (pid_k == 0))


def _take_tma(variant: str | None, *operands: torch.Tensor) -> bool:
    """Whether a GEMM runs its TMA kernel: variant "tma" demands it, "pointer" refuses it, None (the launchers'
    default) takes it on a Hopper device for 16-bit or TF32 dots when every operand is TMA-ready."""
    if variant not in (None, "tma", "pointer"):
        raise ValueError(f"variant must be None, 'tma' or 'pointer', got {variant!r}")
    if variant == "pointer":
        return False
    ready = tma_ready(*operands)
    if variant == "tma":
        if not ready:
            raise ValueError(
                "variant='tma' needs 2-D operands with a contiguous last dim and 16-byte aligned base and row stride"
            )
        return True
    tensor_cores = operands[0].dtype != torch.float32 or dot_flags(operands[0].dtype)["DOT_PRECISION"] == "tf32"
    return hopper_device(operands[0]) and tensor_cores and ready


def _gemm_grid(rows: int, cols: int):
    return lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"]),)


def linear_act_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation_code: int,
    save_preact: bool,
    *,
    variant: str | None = None,
    config: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches the forward kernel. x: (M, K), weight: (N, K), bias: (N,) or None, all validated by the caller.

    Returns (y, preact), both (M, N) contiguous; preact is an empty tensor unless ``save_preact``. variant: see
    _take_tma; config: one gemm_common.TMA_SHAPES row for the TMA kernel instead of autotuning (tests).
    """
    M, K = x.shape
    N = weight.shape[0]
    y = utils.empty_output((M, N), x)
    preact = utils.empty_output((M, N) if save_preact else (0,), x)
    if M == 0 or N == 0:
        return y, preact
    bias_arg = bias.contiguous() if bias is not None else y  # never read without HAS_BIAS
    if K > 0 and _take_tma(variant, x, weight):
        launch_tma(
            _linear_act_fwd_tma_kernel,
            tma_grid(M, N, num_sms(x)),
            (tensor_descriptor(x), tensor_descriptor(weight), bias_arg, y, preact if save_preact else y, M, N, K),
            dict(ACTIVATION=activation_code, HAS_BIAS=bias is not None, SAVE_PREACT=save_preact, **dot_flags(x.dtype)),
            config,
        )
        return y, preact
    _linear_act_fwd_kernel[_gemm_grid(M, N)](
        x,
        weight,
        bias_arg,
        y,
        preact if save_preact else y,
        M,
        N,
        K,
        x.stride(0),
        x.stride(1),
        weight.stride(0),
        weight.stride(1),
        ACTIVATION=activation_code,
        HAS_BIAS=bias is not None,
        SAVE_PREACT=save_preact,
        **dot_flags(x.dtype),
    )
    return y, preact


def linear_act_bwd(
    grad_y: torch.Tensor,
    saved: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    activation_code: int,
    has_bias: bool,
    need_grad_x: bool,
    need_grad_weight: bool,
    *,
    variant: str | None = None,
    config: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launches the backward kernels. grad_y, saved: (M, N); x: (M, K); weight: (N, K).

    Returns (grad_x, grad_weight, grad_bias); the ones not asked for are empty tensors. variant and config: as
    linear_act_fwd's, for both GEMMs.
    """
    M, K = x.shape
    N = weight.shape[0]
    grad_y = grad_y.contiguous()
    saved = saved.contiguous() if activation_code != 0 else grad_y
    flags = dot_flags(x.dtype)
    # Outputs not asked for are fresh empty tensors (custom-op outputs may not alias each other).
    grad_x, grad_weight, grad_bias = x.new_empty((0,)), x.new_empty((0,)), x.new_empty((0,))
    if need_grad_x:
        grad_x = utils.empty_output((M, K), x)
        if N == 0:
            grad_x.zero_()
        elif M > 0 and K > 0 and _take_tma(variant, grad_y, saved, weight):
            dy_desc = tensor_descriptor(grad_y)
            saved_desc = tensor_descriptor(saved) if activation_code != 0 else dy_desc
            launch_tma(
                _linear_act_bwd_dx_tma_kernel,
                tma_grid(M, K, num_sms(x)),
                (dy_desc, saved_desc, tensor_descriptor(weight), grad_x, M, N, K),
                dict(ACTIVATION=activation_code, **flags),
                config,
            )
        elif M > 0 and K > 0:
            _linear_act_bwd_dx_kernel[_gemm_grid(M, K)](
                grad_y,
                saved,
                weight,
                grad_x,
                M,
                N,
                K,
                weight.stride(0),
                weight.stride(1),
                ACTIVATION=activation_code,
                **flags,
            )
    if need_grad_weight or has_bias:
        # db comes out of the dW kernel, so dW storage exists whenever db is asked for.
        grad_weight = utils.empty_output((N, K), x)
        if has_bias:
            grad_bias = utils.empty_output((N,), x)
        if M == 0:
            grad_weight.zero_()
            grad_bias.zero_()
        elif N > 0 and K > 0 and _take_tma(variant, grad_y, saved, x):
            dy_desc = tensor_descriptor(grad_y)
            saved_desc = tensor_descriptor(saved) if activation_code != 0 else dy_desc
            launch_tma(
                _linear_act_bwd_dw_tma_kernel,
                tma_grid(N, K, num_sms(x)),
                (
                    dy_desc,
                    saved_desc,
                    tensor_descriptor(x),
                    grad_weight,
                    grad_bias if has_bias else grad_weight,
                    M,
                    N,
                    K,
                ),
                dict(ACTIVATION=activation_code, HAS_BIAS=has_bias, **flags),
                config,
            )
        elif N > 0:
            # With K == 0 there are no dW tiles, but one column of programs still sums db.
            _linear_act_bwd_dw_kernel[_gemm_grid(N, max(K, 1))](
                grad_y,
                saved,
                x,
                grad_weight,
                grad_bias if has_bias else grad_weight,
                M,
                N,
                K,
                x.stride(0),
                x.stride(1),
                ACTIVATION=activation_code,
                HAS_BIAS=has_bias,
                **flags,
            )
        if not need_grad_weight:
            grad_weight = x.new_empty((0,))
    return grad_x, grad_weight, grad_bias
