"""Triton kernels for conv2d_act: y = act(conv2d(x, W) + b + residual), forward and backward, as implicit GEMMs.

Forward: rows are output pixels (n, oh, ow), columns output channels of one group, the reduction runs
over filter taps (kh, kw) and input-channel blocks, gathering x on the fly (no im2col in memory); bias,
residual and activation are applied to the fp32 accumulator. Backward forms dz = dy * act'(saved) while
loading tiles (as linear_act does), in
  dx: rows are input pixels (n, ih, iw), columns input channels; the reduction runs over taps and output
      channels, keeping only the output pixels that the stride actually reaches;
  dW: rows are output channels, columns (kh, kw, ci), the reduction over output pixels; the first
      column of programs also sums db.
Every tensor is addressed through its logical NCHW strides, so NCHW and channels_last inputs both work
(channels_last gives unit-stride channel loads). Groups run on the second grid axis; depthwise is groups == C.
Padding is (top, left); the output size, passed in, implies bottom/right padding (asymmetric "same").

Hopper (capability 9.x): the forward and dx kernels load the weight by TMA (W_TMA: a 4-D descriptor over its
(taps, groups, Cout_g, Cin_g) copy, weight_taps; each tile a plain (output, input channel) block, zero-filled past
the group) for 16-bit and TF32 dots when Cin_g * element size is a multiple of 16 bytes; the im2col gather of the
activations stays pointer-based, except in a pointwise forward (1x1, stride 1, no padding, channels_last: X_TMA, x
as a (pixels, Cin) matrix), and the dW kernel loads dy (and the saved input) by TMA where it is channels_last
(DY_TMA). Every kernel loops over tiles (every group's, on one grid axis): one program per tile, or persistent
(PERSISTENT: a program per SM) where an operand comes by TMA, and warp-specialised only in the pointwise forward
(gemm_common.CONV_HOPPER_SHAPES says why).
"""

import torch
import triton
import triton.language as tl

from . import utils
from .activations import apply_activation
from .gemm_common import (
    conv_autotune,
    dot_flags,
    grad_preact,
    grouped_tile,
    hopper_device,
    launch_tma,
    load_grad_preact,
    mma,
    num_sms,
    tensor_descriptor,
    tma_ready,
)


@conv_autotune(
    key=["M", "COUT_G", "CIN_G", "KH", "KW", "ACTIVATION"], x_desc=("BLOCK_M", "BLOCK_K"), w_desc=("BLOCK_N", "BLOCK_K")
)
@triton.jit
def _conv2d_act_fwd_kernel(
    # pointers; w_desc: the weight by TMA (weight_taps' (KH*KW, groups, COUT_G, CIN_G)) when W_TMA, else None;
    # x_desc: x as a (pixels, Cin) matrix by TMA when X_TMA (a pointwise conv: 1x1, stride 1, no padding), else None
    x_ptr, x_desc, w_ptr, w_desc, bias_ptr, res_ptr, y_ptr, preact_ptr,
    # sizes: M = batch * OH * OW
    M, H, W, OH, OW, CIN_G, COUT_G, GROUPS,
    # geometry
    SH, SW, PH, PW, DH, DW,
    # strides (logical NCHW order for x, residual, y; (Cout, Cin_g, KH, KW) for W)
    sxn, sxc, sxh, sxw, swo, swi, swh, sww, srn, src, srh, srw, syn, syc, syh, syw,
    # meta-parameters (PERSISTENT only sizes the grid; see _tile_grid)
    KH: tl.constexpr, KW: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, SAVE_PREACT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    W_TMA: tl.constexpr, X_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(COUT_G, BLOCK_N)
    for tile in tl.range(
        tl.program_id(0), GROUPS * num_m * num_n, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        group = tile // (num_m * num_n)
        pid_m, pid_n = grouped_tile(tile % (num_m * num_n), num_m, num_n, GROUP_M)
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        n_idx = offs_m // (OH * OW)
        oh = (offs_m // OW) % OH
        ow = offs_m % OW
        offs_co_g = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_co = offs_co_g < COUT_G
        offs_co = group * COUT_G + offs_co_g

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if X_TMA:  # a plain GEMM over input channels; past CIN_G, x's next group meets the weight's zero fill
            for c0 in range(0, CIN_G, BLOCK_K):
                a = x_desc.load([pid_m * BLOCK_M, group * CIN_G + c0])
                b = w_desc.load([0, group, pid_n * BLOCK_N, c0]).reshape(BLOCK_N, BLOCK_K)
                acc = mma(a, b.T, acc, DOT_PRECISION, UPCAST_DOT)
        else:
            for tap in range(KH * KW):
                kh = tap // KW
                kw = tap % KW
                ih = oh * SH - PH + kh * DH
                iw = ow * SW - PW + kw * DW
                row_ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                x_rows = x_ptr + n_idx * sxn + ih * sxh + iw * sxw
                for c0 in range(0, CIN_G, BLOCK_K):
                    offs_c = c0 + tl.arange(0, BLOCK_K)
                    mask_c = offs_c < CIN_G
                    a = tl.load(
                        x_rows[:, None] + (group * CIN_G + offs_c)[None, :] * sxc,
                        mask=row_ok[:, None] & mask_c[None, :],
                        other=0.0,
                    )
                    if W_TMA:  # zero past CIN_G and past this group's COUT_G
                        b = w_desc.load([tap, group, pid_n * BLOCK_N, c0]).reshape(BLOCK_N, BLOCK_K).T
                    else:
                        b = tl.load(
                            w_ptr + offs_co[None, :] * swo + offs_c[:, None] * swi + kh * swh + kw * sww,
                            mask=mask_c[:, None] & mask_co[None, :],
                            other=0.0,
                        )
                    acc = mma(a, b, acc, DOT_PRECISION, UPCAST_DOT)

        out_mask = mask_m[:, None] & mask_co[None, :]
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_co, mask=mask_co, other=0.0).to(tl.float32)[None, :]
        if HAS_RESIDUAL:
            res_offsets = (n_idx * srn + oh * srh + ow * srw)[:, None] + offs_co[None, :] * src
            acc += tl.load(res_ptr + res_offsets, mask=out_mask, other=0.0).to(tl.float32)
        out_offsets = (n_idx * syn + oh * syh + ow * syw)[:, None] + offs_co[None, :] * syc
        if SAVE_PREACT:
            tl.store(preact_ptr + out_offsets, acc.to(preact_ptr.dtype.element_ty), mask=out_mask)
        y = apply_activation(acc, ACTIVATION)
        tl.store(y_ptr + out_offsets, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@conv_autotune(key=["M", "COUT_G", "CIN_G", "KH", "KW", "ACTIVATION"], w_desc=("BLOCK_K", "BLOCK_N"))
@triton.jit
def _conv2d_act_bwd_dx_kernel(
    # pointers: dy and saved share strides; w_desc as in the forward kernel
    dy_ptr, saved_ptr, w_ptr, w_desc, dx_ptr,
    # sizes: M = batch * H * W (input pixels)
    M, H, W, OH, OW, CIN_G, COUT_G, GROUPS,
    # geometry
    SH, SW, PH, PW, DH, DW,
    # strides
    sdn, sdc, sdh, sdw, swo, swi, swh, sww, sxn, sxc, sxh, sxw,
    # meta-parameters (BLOCK_N tiles input channels, BLOCK_K output channels; PERSISTENT only sizes the grid)
    KH: tl.constexpr, KW: tl.constexpr, ACTIVATION: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, W_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(CIN_G, BLOCK_N)
    for tile in tl.range(
        tl.program_id(0), GROUPS * num_m * num_n, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        group = tile // (num_m * num_n)
        pid_m, pid_n = grouped_tile(tile % (num_m * num_n), num_m, num_n, GROUP_M)
        offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        n_idx = offs_m // (H * W)
        ih = (offs_m // W) % H
        iw = offs_m % W
        offs_ci_g = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_ci = offs_ci_g < CIN_G

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tap in range(KH * KW):
            kh = tap // KW
            kw = tap % KW
            th = ih + PH - kh * DH
            tw = iw + PW - kw * DW
            # Clamp before dividing: the bounds checks below reject what the clamp changed.
            oh = tl.maximum(th, 0) // SH
            ow = tl.maximum(tw, 0) // SW
            row_ok = mask_m & (th >= 0) & (tw >= 0) & (th % SH == 0) & (tw % SW == 0) & (oh < OH) & (ow < OW)
            dy_rows = n_idx * sdn + oh * sdh + ow * sdw
            for c0 in range(0, COUT_G, BLOCK_K):
                offs_co_g = c0 + tl.arange(0, BLOCK_K)
                mask_co = offs_co_g < COUT_G
                offs_co = group * COUT_G + offs_co_g
                dz = load_grad_preact(
                    dy_ptr,
                    saved_ptr,
                    dy_rows[:, None] + offs_co[None, :] * sdc,
                    row_ok[:, None] & mask_co[None, :],
                    ACTIVATION,
                )
                if W_TMA:
                    w = w_desc.load([tap, group, c0, pid_n * BLOCK_N]).reshape(BLOCK_K, BLOCK_N)
                else:
                    w = tl.load(
                        w_ptr + offs_co[:, None] * swo + offs_ci_g[None, :] * swi + kh * swh + kw * sww,
                        mask=mask_co[:, None] & mask_ci[None, :],
                        other=0.0,
                    )
                acc = mma(dz, w, acc, DOT_PRECISION, UPCAST_DOT)

        dx_offsets = (n_idx * sxn + ih * sxh + iw * sxw)[:, None] + (group * CIN_G + offs_ci_g)[None, :] * sxc
        tl.store(dx_ptr + dx_offsets, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_ci[None, :])


@conv_autotune(
    key=["M", "COUT_G", "CIN_G", "KH", "KW", "ACTIVATION"],
    dy_desc=("BLOCK_K", "BLOCK_M"),
    saved_desc=("BLOCK_K", "BLOCK_M"),
)
@triton.jit
def _conv2d_act_bwd_dw_kernel(
    # pointers: dy and saved share strides; dy_desc, saved_desc: the same as (pixels, Cout) matrices by TMA when
    # DY_TMA (channels_last), else None; dw is (Cout, Cin_g, KH, KW) contiguous
    dy_ptr, saved_ptr, dy_desc, saved_desc, x_ptr, dw_ptr, db_ptr,
    # sizes: M = batch * OH * OW (the reduction)
    M, H, W, OH, OW, CIN_G, COUT_G, GROUPS,
    # geometry
    SH, SW, PH, PW, DH, DW,
    # strides
    sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw,
    # meta-parameters (BLOCK_M tiles output channels, BLOCK_N the (kh, kw, ci) columns, BLOCK_K pixels; PERSISTENT
    # only sizes the grid)
    KH: tl.constexpr, KW: tl.constexpr, ACTIVATION: tl.constexpr, HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, DY_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_cols = CIN_G * KH * KW
    num_co = tl.cdiv(COUT_G, BLOCK_M)
    num_j = tl.maximum(tl.cdiv(num_cols, BLOCK_N), 1)  # one column of tiles even without columns, for db
    for tile in tl.range(
        tl.program_id(0), GROUPS * num_co * num_j, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        group = tile // (num_co * num_j)
        pid_co, pid_j = grouped_tile(tile % (num_co * num_j), num_co, num_j, GROUP_M)
        offs_co_g = pid_co * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_co = offs_co_g < COUT_G
        offs_co = group * COUT_G + offs_co_g
        offs_j = pid_j * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_j = offs_j < num_cols
        kh = offs_j // (KW * CIN_G)
        kw = (offs_j // CIN_G) % KW
        ci = group * CIN_G + offs_j % CIN_G

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        db = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for m0 in range(0, M, BLOCK_K):
            offs_m = m0 + tl.arange(0, BLOCK_K)
            mask_m = offs_m < M
            n_idx = offs_m // (OH * OW)
            oh = (offs_m // OW) % OH
            ow = offs_m % OW
            if DY_TMA:  # (BLOCK_K pixels, BLOCK_M channels): zero past M; channels past the group's are not stored
                dz = dy_desc.load([m0, group * COUT_G + pid_co * BLOCK_M])
                if ACTIVATION != 0:
                    dz = grad_preact(dz, saved_desc.load([m0, group * COUT_G + pid_co * BLOCK_M]), ACTIVATION)
                dz_t = dz.T
            else:
                dz_offsets = (n_idx * sdn + oh * sdh + ow * sdw)[None, :] + offs_co[:, None] * sdc
                dz_t = load_grad_preact(dy_ptr, saved_ptr, dz_offsets, mask_co[:, None] & mask_m[None, :], ACTIVATION)
            ih = oh[:, None] * SH - PH + kh[None, :] * DH
            iw = ow[:, None] * SW - PW + kw[None, :] * DW
            x_ok = mask_m[:, None] & mask_j[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = tl.load(x_ptr + n_idx[:, None] * sxn + ci[None, :] * sxc + ih * sxh + iw * sxw, mask=x_ok, other=0.0)
            acc = mma(dz_t, x, acc, DOT_PRECISION, UPCAST_DOT)
            if HAS_BIAS:
                db += tl.sum(dz_t.to(tl.float32), axis=1)

        # dw[co, ci_local, kh, kw], contiguous
        dw_offsets = offs_co[:, None] * num_cols + ((offs_j % CIN_G) * (KH * KW) + kh * KW + kw)[None, :]
        tl.store(dw_ptr + dw_offsets, acc.to(dw_ptr.dtype.element_ty), mask=mask_co[:, None] & mask_j[None, :])
        if HAS_BIAS:
            # Every column of tiles summed the same dz; the first one writes it.
            tl.store(db_ptr + offs_co, db.to(db_ptr.dtype.element_ty), mask=mask_co & (pid_j == 0))


def _tile_grid(rows: int, cols: int, groups: int, programs: int):
    """Programs of a kernel's tile loop (every group's tiles on one axis): one per tile, or at most
    ``programs`` (the SMs) when the config is persistent."""

    def grid(meta):
        tiles = groups * triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"])
        return (min(tiles, programs) if meta["PERSISTENT"] else tiles,)

    return grid


def _strides4(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def weight_taps(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The weight (Cout, Cin_g, KH, KW) as (KH*KW, groups, Cout_g, Cin_g), contiguous: for each filter tap and
    group a plain (output channel, input channel) matrix, the tile a TMA descriptor loads (a copy, except for 1x1
    filters in the standard layout)."""
    cout, cin_g, KH, KW = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(KH * KW, groups, cout // groups, cin_g).contiguous()


def _weight_descriptor(variant: str | None, x: torch.Tensor, weight: torch.Tensor, groups: int):
    """(W_TMA, descriptor or None): whether the weight comes by TMA. variant "tma" demands it, "pointer" refuses it,
    None (the launchers' default) takes it on a Hopper device for 16-bit or TF32 dots when the taps matrix is
    TMA-ready (Cin_g * element size a multiple of 16 bytes). The activations' im2col gather stays pointer-based: its
    rows are pixels at a stride and its taps cross the image border, no tile a descriptor can describe."""
    if variant not in (None, "tma", "pointer"):
        raise ValueError(f"variant must be None, 'tma' or 'pointer', got {variant!r}")
    if variant == "pointer":
        return False, None
    tensor_cores = x.dtype != torch.float32 or dot_flags(x.dtype)["DOT_PRECISION"] == "tf32"
    if variant is None and not (hopper_device(x) and tensor_cores):
        return False, None
    ready = (weight.shape[1] * weight.element_size()) % 16 == 0
    if not ready:
        if variant == "tma":
            raise ValueError(
                "variant='tma' needs input channels per group times the element size to be a multiple of 16 bytes"
            )
        return False, None
    taps = weight_taps(weight, groups)
    if taps.data_ptr() % 16:  # a 1x1 filter's view of an unaligned weight: copy it
        taps = taps.clone()
    return True, tensor_descriptor(taps)


def _pointwise_descriptor(x: torch.Tensor, weight: torch.Tensor, stride, padding, groups: int):
    """x as a (pixels, Cin) matrix by TMA, or None: for a pointwise conv (1x1, stride 1, no padding) the forward is
    a plain GEMM of that matrix and the weight, and with both operands by TMA its tile loop can be warp-specialised.
    Taken beside the weight's descriptor when x is channels_last and contiguous with input channels per group a
    multiple of 16 bytes (a group's first channel starts a tile, which TMA wants 16-byte aligned)."""
    pointwise = weight.shape[2:] == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
    if not (pointwise and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    if (weight.shape[1] * x.element_size()) % 16 or not tma_ready(rows):
        return None
    return tensor_descriptor(rows)


def _grad_descriptors(
    variant: str | None, grad_z_source: torch.Tensor, saved: torch.Tensor, groups: int, activation_code: int
):
    """(dy descriptor, saved descriptor) of the dW kernel, or (None, None): whether dy (and the saved activation
    input) come by TMA, as (pixels, Cout) matrices. variant as _weight_descriptor's: "tma" demands it, "pointer"
    refuses it, None takes it on a Hopper device for 16-bit or TF32 dots when dy is TMA-ready: channels_last and
    contiguous (each pixel's channels are one row), output channels per group times the element size a multiple of
    16 bytes (a group's first channel is a tile's start, which TMA wants 16-byte aligned)."""
    if variant == "pointer":
        return None, None
    rows = [t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]) for t in (grad_z_source, saved)]
    ready = (
        all(t.is_contiguous(memory_format=torch.channels_last) for t in (grad_z_source, saved))
        and (saved.shape[1] // groups * saved.element_size()) % 16 == 0
        and tma_ready(*rows)
    )
    if variant == "tma":
        if not ready:
            raise ValueError(
                "variant='tma' needs grad_y and saved channels_last and contiguous, with output channels per group "
                "times the element size a multiple of 16 bytes"
            )
    else:
        tensor_cores = saved.dtype != torch.float32 or dot_flags(saved.dtype)["DOT_PRECISION"] == "tf32"
        if not (ready and tensor_cores and hopper_device(saved)):
            return None, None
    dy_desc = tensor_descriptor(rows[0])
    return dy_desc, tensor_descriptor(rows[1]) if activation_code != 0 else dy_desc


def conv2d_act_fwd(
    x,
    weight,
    bias,
    residual,
    out,
    preact,
    stride,
    padding,
    dilation,
    groups,
    activation_code,
    *,
    variant=None,
    config=None,
):
    """Launches the forward kernel into ``out`` (and ``preact`` when not None), both shaped (N, Cout, OH, OW).

    padding is (top, left); out's shape fixes OH, OW. Inputs are validated by the caller. variant: see
    _weight_descriptor; config: one row of gemm_common.TMA_SHAPES' form (tiles, warps, stages, PERSISTENT,
    WARP_SPECIALIZE) instead of autotuning (tests reach every variant this way).
    """
    batch, cin, H, W = x.shape
    cout, cin_g, KH, KW = weight.shape
    OH, OW = out.shape[2:]
    M = batch * OH * OW
    if M == 0 or cout == 0:
        return
    w_tma, w_desc = _weight_descriptor(variant, x, weight, groups)
    x_desc = _pointwise_descriptor(x, weight, stride, padding, groups) if w_tma else None
    res = residual if residual is not None else out
    launch_tma(
        _conv2d_act_fwd_kernel,
        _tile_grid(M, cout // groups, groups, num_sms(x)),
        (
            x,
            x_desc,
            weight,
            w_desc,
            bias if bias is not None else out,
            res,
            out,
            preact if preact is not None else out,
            M,
            H,
            W,
            OH,
            OW,
            cin_g,
            cout // groups,
            groups,
            *stride,
            *padding,
            *dilation,
            *_strides4(x),
            *_strides4(weight),
            *_strides4(res),
            *_strides4(out),
        ),
        dict(
            KH=KH,
            KW=KW,
            ACTIVATION=activation_code,
            HAS_BIAS=bias is not None,
            HAS_RESIDUAL=residual is not None,
            SAVE_PREACT=preact is not None,
            W_TMA=w_tma,
            X_TMA=x_desc is not None,
            **dot_flags(x.dtype),
        ),
        config,
    )


def conv2d_act_bwd(
    grad_z_source,
    saved,
    x,
    weight,
    stride,
    padding,
    dilation,
    groups,
    activation_code,
    has_bias,
    need_grad_x,
    need_grad_weight,
    memory_format,
    *,
    variant=None,
    config=None,
):
    """(grad_x, grad_weight, grad_bias) with dz = grad_z_source * act'(saved) formed in the loaders.

    grad_z_source and saved must share strides; grad_x comes in ``memory_format``. Outputs not asked for are None.
    variant: see _weight_descriptor (the dx kernel's weight) and _grad_descriptors (the dW kernel's dy); config: as
    conv2d_act_fwd's, for both kernels.
    """
    batch, cin, H, W = x.shape
    cout, cin_g, KH, KW = weight.shape
    OH, OW = grad_z_source.shape[2:]
    cout_g = cout // groups
    flags = dot_flags(x.dtype)
    grad_x = grad_weight = grad_bias = None
    saved = saved if activation_code != 0 else grad_z_source
    if need_grad_x:
        grad_x = utils.empty_output(x.shape, x, memory_format)
        if batch * H * W > 0 and cin > 0:
            if cout_g == 0 or batch * OH * OW == 0:
                grad_x.zero_()
            else:
                w_tma, w_desc = _weight_descriptor(variant, x, weight, groups)
                launch_tma(
                    _conv2d_act_bwd_dx_kernel,
                    _tile_grid(batch * H * W, cin_g, groups, num_sms(x)),
                    (
                        grad_z_source,
                        saved,
                        weight,
                        w_desc,
                        grad_x,
                        batch * H * W,
                        H,
                        W,
                        OH,
                        OW,
                        cin_g,
                        cout_g,
                        groups,
                        *stride,
                        *padding,
                        *dilation,
                        *_strides4(grad_z_source),
                        *_strides4(weight),
                        *_strides4(grad_x),
                    ),
                    dict(KH=KH, KW=KW, ACTIVATION=activation_code, W_TMA=w_tma, **flags),
                    config,
                )
    if need_grad_weight or has_bias:
        dw = utils.empty_output(weight.shape, x)
        db = utils.empty_output((cout,), x) if has_bias else None
        if cout > 0:
            if batch * OH * OW == 0:
                dw.zero_()
                if db is not None:
                    db.zero_()
            else:
                dy_desc, saved_desc = _grad_descriptors(variant, grad_z_source, saved, groups, activation_code)
                launch_tma(
                    _conv2d_act_bwd_dw_kernel,
                    _tile_grid(cout_g, max(cin_g * KH * KW, 1), groups, num_sms(x)),
                    (
                        grad_z_source,
                        saved,
                        dy_desc,
                        saved_desc,
                        x,
                        dw,
                        db if db is not None else dw,
                        batch * OH * OW,
                        H,
                        W,
                        OH,
                        OW,
                        cin_g,
                        cout_g,
                        groups,
                        *stride,
                        *padding,
                        *dilation,
                        *_strides4(grad_z_source),
                        *_strides4(x),
                    ),
                    dict(
                        KH=KH,
                        KW=KW,
                        ACTIVATION=activation_code,
                        HAS_BIAS=has_bias,
                        DY_TMA=dy_desc is not None,
                        **flags,
                    ),
                    config,
                )
        grad_weight = dw if need_grad_weight else None
        grad_bias = db
    return grad_x, grad_weight, grad_bias
