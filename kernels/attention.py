"""Triton flash attention, forward and backward: softmax(q k^T * scale + masks) v without the N x N matrix.

Forward: one program per (query block, batch * query head); an online softmax over key blocks keeps a
running max and sum in fp32 and saves the log-sum-exp (base 2) per query for backward. Backward
(FlashAttention-2's split): delta = rowsum(dO * O); one kernel per key block accumulates dK and dV over
query blocks, another per query block accumulates dQ over key blocks — no atomics, so it is
deterministic. GQA: query head h reads key/value head h // (Hq // Hkv); dK/dV come out per query head
and the caller sums each group.

Masks: causal (SDPA's top-left alignment: key j is visible to query i when j <= i) and a key-padding
mask (B, Nk), nonzero = ignore. A query whose keys are all masked outputs zeros (its LSE is +inf).
Hopper (capability 9.x): each kernel has a twin whose Q, K, V (and dO) tiles come by TMA (4-D host tensor
descriptors over (B, H, N, D), zero-filled past each sequence and past D), taken for fp16/bf16 and TF32 when the
tensors are TMA-ready (last dim contiguous, 16-byte aligned base and strides) and the kernel's dots have 64+ rows
(wgmma's); otherwise the pointer kernel. Packed (varlen) layouts take the twins too, as FlashAttention-3 does: one
descriptor over the (1, H, T, D) view of all the tokens, a sequence's tiles starting at its first token's row; a tile
running past the sequence's end loads the next sequence's rows (TMA's zeros past the last), which are masked as keys
(position vs the sequence's length; p = 0, so finite rows of V and dO add nothing) and as queries not stored (the
stores stay pointer-based, bounded by the sequence). The TMA forward autotunes over FWD_TMA_VARIANTS: one program
per tile, persistent (a program per SM looping over tiles), and for fp16/bf16 warp-specialised (a TMA producer
warpgroup beside the consumers).
delta = rowsum(dO * O) stays a torch reduction (memory-bound: TMA gives it nothing), so O takes no descriptor.

Layouts: (B, H, N, D) with any strides; D up to 256, padded to a power of two inside the kernel. Tiles depend on
the padded head dim, the dtype and the dot precision (tiles(): 64x64 for fp16/bf16 up to D = 128, smaller from
there and for fp32), so every head dim fits an H200 block's 227 KB of shared memory; python -m tests.compile_gate
compiles each choice for sm_90 and checks it.
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from . import utils
from .gemm_common import INTERPRET, dot_flags, hopper_device, mma, num_sms, tensor_descriptor

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


class Tiles(NamedTuple):
    block_m: int  # queries per program (fwd, dq) or per inner step (dkdv)
    block_n: int  # keys per inner step (fwd, dq) or per program (dkdv)
    num_warps: int
    num_stages: int


# (largest padded head dim, tiles) per dot kind and kernel, smallest head dims first.
# NOTE: chosen from ptxas for sm_90 (tests/compile_gate; speed unmeasured, no GPU run yet). fp16/bf16: 64x64 on
# 4 warps fits up to D = 128 (dkdv at D = 128: 8 warps split its 64 key rows into two 32-row warpgroups and ptxas
# serialised the wgmmas (C7515); 4 warps spill 80 B); at D = 256, 64x64 in backward needs 262-271 KB of shared
# memory (> 227 KB), so dkdv takes 32 keys per program on mma.sync (64x32 on 8 warps: 136 KB, 178 registers) and
# fwd/dq 8 warps and 2 stages (164/197 KB). tf32 operands are twice as wide: smaller tiles from D = 128.
# fp32 without TF32 runs tl.dot on FMAs, which keeps whole operand rows in registers: at 64x64 it spilled
# 2-165 KB per thread (and took 20-330 s to compile); 32x32 (dkdv 16x32) on 8 warps, one or two stages, keeps
# every head dim up to 256 under 200 registers without spills.
_TILES = {
    "half": {
        "fwd": [(128, Tiles(64, 64, 4, 3)), (256, Tiles(64, 64, 8, 2))],
        "dkdv": [(64, Tiles(64, 64, 4, 3)), (128, Tiles(64, 64, 4, 3)), (256, Tiles(64, 32, 8, 2))],
        "dq": [(128, Tiles(64, 64, 4, 3)), (256, Tiles(64, 64, 8, 2))],
    },
    "tf32": {
        "fwd": [(64, Tiles(64, 64, 4, 3)), (128, Tiles(64, 64, 8, 2)), (256, Tiles(32, 32, 4, 2))],
        "dkdv": [
            (32, Tiles(64, 64, 4, 3)),
            (64, Tiles(64, 64, 8, 3)),
            (128, Tiles(64, 32, 8, 2)),
            (256, Tiles(32, 32, 8, 2)),
        ],
        "dq": [(64, Tiles(64, 64, 4, 3)), (128, Tiles(64, 32, 8, 2)), (256, Tiles(32, 32, 4, 2))],
    },
    "ieee": {
        "fwd": [(128, Tiles(32, 32, 8, 1)), (256, Tiles(32, 32, 8, 2))],
        "dkdv": [(256, Tiles(16, 32, 8, 1))],
        "dq": [(256, Tiles(32, 32, 8, 2))],
    },
}


def tiles(kernel: str, block_d: int, dtype: torch.dtype, precision: str) -> Tiles:
    """The tiles of kernel ("fwd", "dkdv" or "dq") at padded head dim block_d, for dtype and dot precision."""
    if INTERPRET:  # programs run one after another: small tiles keep CPU tests fast
        return Tiles(32, 32, 4, 1)
    kind = "half" if dtype in (torch.float16, torch.bfloat16) else precision
    for largest, choice in _TILES[kind][kernel]:
        if block_d <= largest:
            return choice
    raise ValueError(f"head dim {block_d} is larger than the attention kernels take ({largest})")


class FwdVariant(NamedTuple):
    """One config of the TMA forward's autotune space."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    persistent: bool  # one program per SM looping over (query block, batch * head) tiles
    warp_specialize: bool  # a TMA producer warpgroup beside the softmax/wgmma consumers (needs num_warps=4)


def _plain_and_persistent(block_m: int, block_n: int, num_warps: int, num_stages: int) -> list[FwdVariant]:
    return [FwdVariant(block_m, block_n, num_warps, num_stages, persistent, False) for persistent in (False, True)]


# The TMA forward's autotune space per dot kind and largest padded head dim: the pointer kernel's tiles (_TILES) one
# program per tile and persistent, and for fp16/bf16 a warp-specialised persistent variant. Only kinds and head dims
# whose query tiles have 64+ rows take TMA (see _take_tma).
# NOTE (ptxas and SASS for sm_90, tests/compile_gate; speed unmeasured, no GPU run yet): Triton 3.6 honours
# tl.range(warp_specialize=True) only at num_warps=4 and flatten=False (ignored silently otherwise), so the
# warp-specialised rows have 4 warps and the gate demands USETMAXREG in their SASS. 128x64 there: 147,624 B of
# shared memory at D = 128, 168 registers; at D = 256 only 64x64 fits (229,528 B, 4 B spilled). With TF32 dots its
# warp specialisation does not compile (RuntimeError in ConvertNVGPUToLLVM), so TF32 has no such row.
FWD_TMA_VARIANTS = {
    "half": [
        (128, [*_plain_and_persistent(64, 64, 4, 3), FwdVariant(128, 64, 4, 2, True, True)]),
        (256, [*_plain_and_persistent(64, 64, 8, 2), FwdVariant(64, 64, 4, 2, True, True)]),
    ],
    "tf32": [(64, _plain_and_persistent(64, 64, 4, 3)), (128, _plain_and_persistent(64, 64, 8, 2))],
}
# Under the interpreter (one config: it cannot autotune over several); tests reach the others through ``config=``.
INTERPRET_FWD_VARIANT = FwdVariant(32, 32, 4, 1, False, False)


def fwd_tma_variants(block_d: int, dtype: torch.dtype, precision: str) -> list[FwdVariant]:
    """The TMA forward's variants at padded head dim block_d; where the table has none (variant="tma" demanded
    for IEEE fp32, or TF32 past D = 128), the pointer kernel's tiles, one program per tile."""
    if INTERPRET:
        return [INTERPRET_FWD_VARIANT]
    kind = "half" if dtype in (torch.float16, torch.bfloat16) else precision
    for largest, variants in FWD_TMA_VARIANTS.get(kind, []):
        if block_d <= largest:
            return variants
    return [FwdVariant(*tiles("fwd", block_d, dtype, precision), False, False)]


def _fwd_tma_blocks(nargs):
    """Config pre_hook: the descriptors load (BLOCK_M or BLOCK_N, BLOCK_D) tiles of one (batch, head)."""
    nargs["q_desc"].block_shape = [1, 1, nargs["BLOCK_M"], nargs["BLOCK_D"]]
    for name in ("k_desc", "v_desc"):
        nargs[name].block_shape = [1, 1, nargs["BLOCK_N"], nargs["BLOCK_D"]]


def _fwd_tma_config(variant: FwdVariant) -> triton.Config:
    return triton.Config(
        {
            "BLOCK_M": variant.block_m,
            "BLOCK_N": variant.block_n,
            "PERSISTENT": variant.persistent,
            "WARP_SPECIALIZE": variant.warp_specialize,
        },
        num_warps=variant.num_warps,
        num_stages=variant.num_stages,
        pre_hook=_fwd_tma_blocks,
    )


def _fwd_tma_configs() -> list[triton.Config]:
    variants = (
        {INTERPRET_FWD_VARIANT}
        if INTERPRET
        else {v for rows in FWD_TMA_VARIANTS.values() for _, vs in rows for v in vs}
    )
    return [_fwd_tma_config(v) for v in sorted(variants)]


def _prune_fwd_tma(configs, named_args, **kwargs):
    """Keeps the configs of this launch's dot kind and head dim (fwd_tma_variants)."""
    wanted = fwd_tma_variants(kwargs["BLOCK_D"], named_args["out_ptr"].dtype, kwargs["DOT_PRECISION"])
    kept = [config for config in configs if _variant_of(config) in wanted]
    # the pointer tiles' fallback is no config of the space: build it
    return kept or [_fwd_tma_config(variant) for variant in wanted]


def _variant_of(config: triton.Config) -> FwdVariant:
    kw = config.kwargs
    variant = (kw["BLOCK_M"], kw["BLOCK_N"], config.num_warps, config.num_stages)
    return FwdVariant(*variant, kw["PERSISTENT"], kw["WARP_SPECIALIZE"])


@triton.jit
def _sequence(cu_seqlens_ptr, b, n, VARLEN: tl.constexpr):
    """(first token, length) of sequence b: packed (varlen) layouts read cu_seqlens, padded ones are 0..n."""
    # One return after a constexpr if/else: the compiler type-checks every return statement, and n may be an
    # int32 or (when it equals 1) a constant, while the packed length is loaded.
    if VARLEN:
        first = tl.load(cu_seqlens_ptr + b)
        start = first.to(tl.int64)
        length = tl.load(cu_seqlens_ptr + b + 1) - first  # int32, as cu_seqlens
    else:
        start = tl.zeros((), dtype=tl.int64)
        length = n
    return start, length


@triton.jit
def _descriptor_origin(b, q_start, k_start, VARLEN: tl.constexpr):
    """(batch, first query row, first key row) of sequence b in the TMA descriptors' coordinates: packed layouts
    are one (1, H, T, D) view of all the tokens, so a sequence starts at its first token's row (int32, as TMA's
    coordinates); padded ones at row 0 of batch b."""
    if VARLEN:
        tile_b = 0
        q_row = q_start.to(tl.int32)
        k_row = k_start.to(tl.int32)
    else:
        tile_b = b
        q_row = 0
        k_row = 0
    return tile_b, q_row, k_row


@triton.jit
def _scores(
    q,
    k_t,
    q_pos,
    k_pos,
    mask_ptr,
    Nk,
    qk_scale,
    CAUSAL: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):
    """Scores in log2 units for a (query block, key block), -inf where masked."""
    s = mma(q, k_t, tl.zeros((q.shape[0], k_t.shape[1]), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT) * qk_scale
    visible = (k_pos < Nk)[None, :]
    if CAUSAL:
        visible = visible & (k_pos[None, :] <= q_pos[:, None])
    if HAS_MASK:
        padded = tl.load(mask_ptr + k_pos, mask=k_pos < Nk, other=1)
        visible = visible & (padded == 0)[None, :]
    return tl.where(visible, s, float("-inf"))


@triton.jit
def _attention_fwd_kernel(
    # pointers (cu_seqlens only for VARLEN)
    q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr,
    # sizes (padded: the lengths; varlen: the maxima)
    Hq, Nq, Nk, D, GROUP,
    # strides in (batch, head, token, dim) order for q, k, v, out (batch stride 0 when packed); (B, Nk) for
    # the mask; (batch, head, token) for lse
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, smb, smn, slb, slh,
    qk_scale,
    # meta-parameters
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    h = bh % Hq
    kv_h = h // GROUP
    q_start, Nq = _sequence(cu_q_ptr, b, Nq, VARLEN)
    k_start, Nk = _sequence(cu_k_ptr, b, Nk, VARLEN)
    q_ptr += b * sqb + h * sqh + q_start * sqn
    k_ptr += b * skb + kv_h * skh + k_start * skn
    v_ptr += b * svb + kv_h * svh + k_start * svn
    q_pos = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    q = tl.load(
        q_ptr + q_pos[:, None] * sqn + d[None, :] * sqd, mask=(q_pos < Nq)[:, None] & (d < D)[None, :], other=0.0
    )
    mask_row = mask_ptr + b * smb

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(Nk, (pid_m + 1) * BLOCK_M) if CAUSAL else Nk
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (k_pos < Nk)[None, :] & (d < D)[:, None]
        k_t = tl.load(k_ptr + k_pos[None, :] * skn + d[:, None] * skd, mask=kv_mask, other=0.0)
        s = _scores(q, k_t, q_pos, k_pos, mask_row, Nk, qk_scale, CAUSAL, HAS_MASK, DOT_PRECISION, UPCAST_DOT)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + k_pos[:, None] * svn + d[None, :] * svd, mask=(k_pos < Nk)[:, None] & (d < D)[None, :], other=0.0
        )
        acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST_DOT)
        m_i = m_new

    visible = l_i > 0.0
    out = tl.where(visible[:, None], acc / tl.where(visible, l_i, 1.0)[:, None], 0.0)
    out_ptr += b * sob + h * soh + q_start * son
    tl.store(
        out_ptr + q_pos[:, None] * son + d[None, :] * sod,
        out.to(out_ptr.dtype.element_ty),
        mask=(q_pos < Nq)[:, None] & (d < D)[None, :],
    )
    lse = tl.where(visible, m_i + tl.math.log2(tl.where(visible, l_i, 1.0)), float("inf"))
    tl.store(lse_ptr + b * slb + h * slh + q_start + q_pos, lse, mask=q_pos < Nq)


@triton.autotune(
    configs=_fwd_tma_configs(),
    key=["Nq", "Nk", "BH", "BLOCK_D", "CAUSAL", "HAS_MASK", "VARLEN", "DOT_PRECISION"],
    prune_configs_by={"early_config_prune": _prune_fwd_tma},
)
@triton.jit
def _attention_fwd_tma_kernel(
    # descriptors of q (B, Hq, Nq, D), k and v (B, Hkv, Nk, D), packed: (1, H, T, D); pointers (cu_seqlens: VARLEN)
    q_desc, k_desc, v_desc, mask_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr,
    # sizes (varlen: the maxima): BH = batch * Hq
    Hq, Nq, Nk, D, GROUP, BH,
    # strides of out (batch, head, token, dim), of the mask (B, Nk) and lse (batch, head)
    sob, soh, son, sod, smb, smn, slb, slh,
    qk_scale,
    # meta-parameters (PERSISTENT only sizes the grid: programs loop over (query block, batch * head) tiles)
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PERSISTENT: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    num_m = tl.cdiv(Nq, BLOCK_M)
    for tile in tl.range(
        tl.program_id(0), num_m * BH, tl.num_programs(0), flatten=False, warp_specialize=WARP_SPECIALIZE
    ):
        bh = tile // num_m
        pid_m = tile % num_m
        if CAUSAL:  # the longest rows (most visible keys) first: a persistent program's last tiles are short
            pid_m = num_m - 1 - pid_m
        b = bh // Hq
        h = bh % Hq
        kv_h = h // GROUP
        q_start, q_len = _sequence(cu_q_ptr, b, Nq, VARLEN)
        k_start, k_len = _sequence(cu_k_ptr, b, Nk, VARLEN)
        tile_b, q_row, k_row = _descriptor_origin(b, q_start, k_start, VARLEN)
        q_pos = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        d = tl.arange(0, BLOCK_D)
        # TMA zero-fills past N (packed: past all tokens) and D; rows of the next packed sequence are masked below
        q = q_desc.load([tile_b, h, q_row + pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
        mask_row = mask_ptr + b.to(tl.int64) * smb

        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        hi = tl.minimum(k_len, (pid_m + 1) * BLOCK_M) if CAUSAL else k_len
        if VARLEN:  # a query block past this sequence's end (the grid covers the longest) has nothing to do
            hi = tl.where(pid_m * BLOCK_M < q_len, hi, 0)
        for start_n in range(0, hi, BLOCK_N):
            k_pos = start_n + tl.arange(0, BLOCK_N)
            k = k_desc.load([tile_b, kv_h, k_row + start_n, 0]).reshape(BLOCK_N, BLOCK_D)
            s = _scores(q, k.T, q_pos, k_pos, mask_row, k_len, qk_scale, CAUSAL, HAS_MASK, DOT_PRECISION, UPCAST_DOT)
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = v_desc.load([tile_b, kv_h, k_row + start_n, 0]).reshape(BLOCK_N, BLOCK_D)
            acc = mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION, UPCAST_DOT)
            m_i = m_new

        visible = l_i > 0.0
        out = tl.where(visible[:, None], acc / tl.where(visible, l_i, 1.0)[:, None], 0.0)
        # pointer stores bounded by the sequence: a tile's rows past its end belong to the next one
        out_tile = out_ptr + b.to(tl.int64) * sob + h.to(tl.int64) * soh + q_start * son
        tl.store(
            out_tile + q_pos[:, None] * son + d[None, :] * sod,
            out.to(out_ptr.dtype.element_ty),
            mask=(q_pos < q_len)[:, None] & (d < D)[None, :],
        )
        lse = tl.where(visible, m_i + tl.math.log2(tl.where(visible, l_i, 1.0)), float("inf"))
        lse_row = lse_ptr + b.to(tl.int64) * slb + h.to(tl.int64) * slh + q_start
        tl.store(lse_row + q_pos, lse, mask=q_pos < q_len)


@triton.jit
def _attention_bwd_dkdv_kernel(
    # pointers: dO has q's strides, delta lse's; dk and dv are fp32 per query head with strides sg*
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr,
    # sizes
    Hq, Nq, Nk, D, GROUP,
    # strides, as in the forward kernel
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smn, slb, slh, sgb, sgh, sgn, sgd,
    qk_scale, scale,
    # meta-parameters
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    h = bh % Hq
    kv_h = h // GROUP
    q_start, Nq = _sequence(cu_q_ptr, b, Nq, VARLEN)
    k_start, Nk = _sequence(cu_k_ptr, b, Nk, VARLEN)
    q_ptr += b * sqb + h * sqh + q_start * sqn
    do_ptr += b * sqb + h * sqh + q_start * sqn
    lse_ptr += b * slb + h * slh + q_start
    delta_ptr += b * slb + h * slh + q_start
    k_pos = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    kv_mask = (k_pos < Nk)[:, None] & (d < D)[None, :]
    k = tl.load(
        k_ptr + b * skb + kv_h * skh + (k_start + k_pos[:, None]) * skn + d[None, :] * skd, mask=kv_mask, other=0.0
    )
    v = tl.load(
        v_ptr + b * svb + kv_h * svh + (k_start + k_pos[:, None]) * svn + d[None, :] * svd, mask=kv_mask, other=0.0
    )
    mask_row = mask_ptr + b * smb
    key_visible = k_pos < Nk
    if HAS_MASK:
        key_visible = key_visible & (tl.load(mask_row + k_pos, mask=k_pos < Nk, other=1) == 0)

    # Everything transposed (keys on rows), as FlashAttention-2's dK/dV loop: no register tensor is transposed.
    # NOTE: the untransposed loop (tl.trans of p and ds as wgmma A operands) made ptxas serialise every wgmma on
    # sm_90 (C7515 "Potential Performance Loss", tests/compile_gate, fp16/bf16 D = 64).
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M if CAUSAL else 0
    for start_m in range(lo, Nq, BLOCK_M):
        q_pos = start_m + tl.arange(0, BLOCK_M)
        q_mask = (q_pos < Nq)[:, None] & (d < D)[None, :]
        q_offsets = q_pos[:, None] * sqn + d[None, :] * sqd
        q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0)
        q_t = tl.load(
            q_ptr + q_pos[None, :] * sqn + d[:, None] * sqd, mask=(d < D)[:, None] & (q_pos < Nq)[None, :], other=0.0
        )
        do = tl.load(do_ptr + q_offsets, mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + q_pos, mask=q_pos < Nq, other=float("inf"))
        delta = tl.load(delta_ptr + q_pos, mask=q_pos < Nq, other=0.0)
        s_t = mma(k, q_t, tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT) * qk_scale
        visible = key_visible[:, None]
        if CAUSAL:
            visible = visible & (k_pos[:, None] <= q_pos[None, :])
        p_t = tl.math.exp2(tl.where(visible, s_t, float("-inf")) - lse[None, :])  # 0 where masked or row empty
        dv = mma(p_t.to(do.dtype), do, dv, DOT_PRECISION, UPCAST_DOT)
        dp_t = mma(v, tl.trans(do), tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = mma(ds_t.to(q.dtype), q, dk, DOT_PRECISION, UPCAST_DOT)

    out_offsets = b * sgb + h * sgh + (k_start + k_pos[:, None]) * sgn + d[None, :] * sgd
    tl.store(dk_ptr + out_offsets, dk * scale, mask=kv_mask)
    tl.store(dv_ptr + out_offsets, dv, mask=kv_mask)


@triton.jit
def _attention_bwd_dq_kernel(
    # pointers: dq has q's strides (the caller allocates it like q), in q's dtype
    q_ptr, k_ptr, v_ptr, mask_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cu_q_ptr, cu_k_ptr,
    # sizes
    Hq, Nq, Nk, D, GROUP,
    # strides, as in the forward kernel
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smn, slb, slh,
    qk_scale, scale,
    # meta-parameters
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // Hq
    h = bh % Hq
    kv_h = h // GROUP
    q_start, Nq = _sequence(cu_q_ptr, b, Nq, VARLEN)
    k_start, Nk = _sequence(cu_k_ptr, b, Nk, VARLEN)
    q_base = b * sqb + h * sqh + q_start * sqn
    k_ptr += b * skb + kv_h * skh + k_start * skn
    v_ptr += b * svb + kv_h * svh + k_start * svn
    q_pos = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    q_mask = (q_pos < Nq)[:, None] & (d < D)[None, :]
    q_offsets = q_base + q_pos[:, None] * sqn + d[None, :] * sqd
    q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0)
    do = tl.load(do_ptr + q_offsets, mask=q_mask, other=0.0)
    lse = tl.load(lse_ptr + b * slb + h * slh + q_start + q_pos, mask=q_pos < Nq, other=float("inf"))
    delta = tl.load(delta_ptr + b * slb + h * slh + q_start + q_pos, mask=q_pos < Nq, other=0.0)
    mask_row = mask_ptr + b * smb

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(Nk, (pid_m + 1) * BLOCK_M) if CAUSAL else Nk
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + tl.arange(0, BLOCK_N)
        kv_mask = (k_pos < Nk)[:, None] & (d < D)[None, :]
        k = tl.load(k_ptr + k_pos[:, None] * skn + d[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + k_pos[:, None] * svn + d[None, :] * svd, mask=kv_mask, other=0.0)
        s = _scores(q, tl.trans(k), q_pos, k_pos, mask_row, Nk, qk_scale, CAUSAL, HAS_MASK, DOT_PRECISION, UPCAST_DOT)
        p = tl.math.exp2(s - lse[:, None])
        dp = mma(do, tl.trans(v), tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT)
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, DOT_PRECISION, UPCAST_DOT)

    tl.store(dq_ptr + q_offsets, (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _attention_bwd_dkdv_tma_kernel(
    # descriptors of q and dO (B, Hq, Nq, D), k and v (B, Hkv, Nk, D), packed: (1, H, T, D); pointers: delta has
    # lse's strides, dk and dv are fp32 per query head with strides sg*; cu_seqlens (VARLEN)
    q_desc, k_desc, v_desc, do_desc, mask_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr, cu_q_ptr, cu_k_ptr,
    # sizes (varlen: the maxima)
    Hq, Nq, Nk, D, GROUP,
    # strides of the mask (B, Nk), lse (batch, head), dk and dv (batch, head, token, dim)
    smb, smn, slb, slh, sgb, sgh, sgn, sgd,
    qk_scale, scale,
    # meta-parameters
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    kv_h = h // GROUP
    q_start, Nq = _sequence(cu_q_ptr, b, Nq, VARLEN)
    k_start, Nk = _sequence(cu_k_ptr, b, Nk, VARLEN)
    tile_b, q_row, k_row = _descriptor_origin(b, q_start, k_start, VARLEN)
    lse_ptr += b.to(tl.int64) * slb + h.to(tl.int64) * slh + q_start
    delta_ptr += b.to(tl.int64) * slb + h.to(tl.int64) * slh + q_start
    k_pos = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    # TMA zero-fills past N (packed: past all tokens) and D; rows of the next packed sequence are masked below (keys
    # by k_pos < Nk, queries by their lse of +inf, so p = 0) and not stored
    k = k_desc.load([tile_b, kv_h, k_row + pid_n * BLOCK_N, 0]).reshape(BLOCK_N, BLOCK_D)
    v = v_desc.load([tile_b, kv_h, k_row + pid_n * BLOCK_N, 0]).reshape(BLOCK_N, BLOCK_D)
    key_visible = k_pos < Nk
    if HAS_MASK:
        key_visible = key_visible & (tl.load(mask_ptr + b.to(tl.int64) * smb + k_pos, mask=k_pos < Nk, other=1) == 0)

    # Keys on rows, as the pointer kernel (see its note); q and dO enter the transposed products as shared-memory
    # views (q.T, do.T), which wgmma reads without a register transpose.
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M if CAUSAL else 0
    hi = Nq
    if VARLEN:  # a key block past this sequence's end (the grid covers the longest) has nothing to do
        hi = tl.where(pid_n * BLOCK_N < Nk, Nq, 0)
    for start_m in range(lo, hi, BLOCK_M):
        q_pos = start_m + tl.arange(0, BLOCK_M)
        q = q_desc.load([tile_b, h, q_row + start_m, 0]).reshape(BLOCK_M, BLOCK_D)
        do = do_desc.load([tile_b, h, q_row + start_m, 0]).reshape(BLOCK_M, BLOCK_D)
        lse = tl.load(lse_ptr + q_pos, mask=q_pos < Nq, other=float("inf"))
        delta = tl.load(delta_ptr + q_pos, mask=q_pos < Nq, other=0.0)
        s_t = mma(k, q.T, tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT) * qk_scale
        visible = key_visible[:, None]
        if CAUSAL:
            visible = visible & (k_pos[:, None] <= q_pos[None, :])
        p_t = tl.math.exp2(tl.where(visible, s_t, float("-inf")) - lse[None, :])  # 0 where masked or row empty
        dv = mma(p_t.to(do.dtype), do, dv, DOT_PRECISION, UPCAST_DOT)
        dp_t = mma(v, do.T, tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = mma(ds_t.to(q.dtype), q, dk, DOT_PRECISION, UPCAST_DOT)

    out_offsets = b.to(tl.int64) * sgb + h.to(tl.int64) * sgh + (k_start + k_pos[:, None]) * sgn + d[None, :] * sgd
    kv_mask = (k_pos < Nk)[:, None] & (d < D)[None, :]
    tl.store(dk_ptr + out_offsets, dk * scale, mask=kv_mask)
    tl.store(dv_ptr + out_offsets, dv, mask=kv_mask)


@triton.jit
def _attention_bwd_dq_tma_kernel(
    # descriptors of q and dO (B, Hq, Nq, D), k and v (B, Hkv, Nk, D), packed: (1, H, T, D); pointers: dq in q's
    # dtype with strides sd*; cu_seqlens (VARLEN)
    q_desc, k_desc, v_desc, do_desc, mask_ptr, lse_ptr, delta_ptr, dq_ptr, cu_q_ptr, cu_k_ptr,
    # sizes (varlen: the maxima)
    Hq, Nq, Nk, D, GROUP,
    # strides of the mask (B, Nk), lse (batch, head), dq (batch, head, token, dim)
    smb, smn, slb, slh, sdb, sdh, sdn, sdd,
    qk_scale, scale,
    # meta-parameters
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, VARLEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip # keeps the signature one line per group: pointers, sizes, strides, meta-parameters
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    kv_h = h // GROUP
    q_start, Nq = _sequence(cu_q_ptr, b, Nq, VARLEN)
    k_start, Nk = _sequence(cu_k_ptr, b, Nk, VARLEN)
    tile_b, q_row, k_row = _descriptor_origin(b, q_start, k_start, VARLEN)
    q_pos = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    # as in dK/dV: rows past the sequence (the next one's, or TMA's zeros) are masked and not stored
    q = q_desc.load([tile_b, h, q_row + pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
    do = do_desc.load([tile_b, h, q_row + pid_m * BLOCK_M, 0]).reshape(BLOCK_M, BLOCK_D)
    row = b.to(tl.int64) * slb + h.to(tl.int64) * slh + q_start + q_pos
    lse = tl.load(lse_ptr + row, mask=q_pos < Nq, other=float("inf"))
    delta = tl.load(delta_ptr + row, mask=q_pos < Nq, other=0.0)
    mask_row = mask_ptr + b.to(tl.int64) * smb

    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = tl.minimum(Nk, (pid_m + 1) * BLOCK_M) if CAUSAL else Nk
    if VARLEN:  # a query block past this sequence's end has nothing to do
        hi = tl.where(pid_m * BLOCK_M < Nq, hi, 0)
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + tl.arange(0, BLOCK_N)
        k = k_desc.load([tile_b, kv_h, k_row + start_n, 0]).reshape(BLOCK_N, BLOCK_D)
        v = v_desc.load([tile_b, kv_h, k_row + start_n, 0]).reshape(BLOCK_N, BLOCK_D)
        s = _scores(q, k.T, q_pos, k_pos, mask_row, Nk, qk_scale, CAUSAL, HAS_MASK, DOT_PRECISION, UPCAST_DOT)
        p = tl.math.exp2(s - lse[:, None])
        dp = mma(do, v.T, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), DOT_PRECISION, UPCAST_DOT)
        ds = p * (dp - delta[:, None])
        dq = mma(ds.to(k.dtype), k, dq, DOT_PRECISION, UPCAST_DOT)

    dq_tile = dq_ptr + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + q_start * sdn
    tl.store(
        dq_tile + q_pos[:, None] * sdn + d[None, :] * sdd,
        (dq * scale).to(dq_ptr.dtype.element_ty),
        mask=(q_pos < Nq)[:, None] & (d < D)[None, :],
    )


def _mask_args(key_padding_mask, q):
    if key_padding_mask is None:
        return q, 0, 0, False  # never read without HAS_MASK
    mask = key_padding_mask.to(torch.uint8)
    return mask, mask.stride(0), mask.stride(1), True


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _layout(t: torch.Tensor, packed: bool) -> tuple:
    """(batch, head, token, dim) strides: padded (B, H, N, D) as is, packed (T, H, D) with batch stride 0."""
    if packed:
        return (0, t.stride(1), t.stride(0), t.stride(2))
    return tuple(t.stride())


def _launch_meta(kernel, causal, has_mask, varlen, D, dtype):
    flags = dot_flags(dtype)
    block_m, block_n, num_warps, num_stages = tiles(kernel, _block_d(D), dtype, flags["DOT_PRECISION"])
    return dict(
        CAUSAL=causal,
        HAS_MASK=has_mask,
        VARLEN=varlen,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=_block_d(D),
        num_warps=num_warps,
        num_stages=num_stages,
        **flags,
    )


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """TMA's rules for the 4-D descriptors: last dim contiguous, base address and other strides 16-byte aligned."""
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(st * t.element_size() % 16 == 0 for st in t.stride()[:-1])
        for t in tensors
    )


def _take_tma(variant: str | None, *tensors: torch.Tensor, rows: int = 64) -> bool:
    """Whether a kernel runs its TMA twin: "tma" demands it, "pointer" refuses it, None (default) takes it on a
    Hopper device for 16-bit or TF32 dots when every tensor is TMA-ready and the kernel's dots have 64+ rows (its
    BLOCK_M; dK/dV's BLOCK_N): smaller ones lower to mma.sync, not wgmma (TF32 at D > 128, dK/dV at D > 128)."""
    if variant not in (None, "tma", "pointer"):
        raise ValueError(f"variant must be None, 'tma' or 'pointer', got {variant!r}")
    if variant == "pointer":
        return False
    ready = _tma_ready(*tensors)
    if variant == "tma":
        if not ready:
            raise ValueError(
                "variant='tma' needs q, k, v (and dO) with a contiguous last dim and 16-byte aligned base and strides"
            )
        return True
    q = tensors[0]
    tensor_cores = q.dtype != torch.float32 or dot_flags(q.dtype)["DOT_PRECISION"] == "tf32"
    return hopper_device(q) and tensor_cores and ready and rows >= 64


def _tma_view(t: torch.Tensor, packed: bool) -> torch.Tensor:
    """The (B, H, N, D) view the 4-D descriptors take: packed (T, H, D) tensors as one batch of all the tokens,
    (1, H, T, D), as FlashAttention-3 serves varlen (tiles run into the next sequence, which the kernels mask)."""
    return t.transpose(0, 1).unsqueeze(0) if packed else t


def _descriptors(tensors, rows, packed):
    """4-D host descriptors of (B, H, N, D) tensors (packed: _tma_view) loading (rows, BLOCK_D) tiles of one
    (batch, head)."""
    block_d = _block_d(tensors[0].shape[-1])
    found = []
    for t, r in zip(tensors, rows, strict=True):
        descriptor = tensor_descriptor(_tma_view(t, packed))
        descriptor.block_shape = [1, 1, r, block_d]
        found.append(descriptor)
    return found


def _launch_fwd_tma(q, k, v, mask, out, lse, cu_seqlens, sizes, strides, scale, meta, config):
    """The TMA forward, autotuned over FWD_TMA_VARIANTS, or with ``config`` (a FwdVariant) alone (tests)."""
    batch, Hq, Hkv, Nq, Nk, D = sizes
    flags = {n: meta[n] for n in ("CAUSAL", "HAS_MASK", "VARLEN", "BLOCK_D", "DOT_PRECISION", "UPCAST_DOT")}
    programs = num_sms(q)

    def grid(launch):
        tiles = triton.cdiv(Nq, launch["BLOCK_M"]) * batch * Hq
        return (min(tiles, programs) if launch["PERSISTENT"] else tiles,)

    # block shapes are set by the config's pre_hook (_fwd_tma_blocks)
    descriptors = (tensor_descriptor(_tma_view(t, meta["VARLEN"])) for t in (q, k, v))
    args = (*descriptors, mask, out, lse, *cu_seqlens, Hq, Nq, Nk, D, Hq // Hkv, batch * Hq)
    args = (*args, *strides, scale * 1.4426950408889634)
    if config is None:
        _attention_fwd_tma_kernel[grid](*args, **flags)
        return
    chosen = _fwd_tma_config(FwdVariant(*config))
    named = {**dict(zip(_attention_fwd_tma_kernel.arg_names, args, strict=False)), **flags, **chosen.all_kwargs()}
    _fwd_tma_blocks(named)
    _attention_fwd_tma_kernel.fn[grid](*args, **flags, **chosen.all_kwargs())


def attention_fwd(
    q,
    k,
    v,
    key_padding_mask,
    causal: bool,
    scale: float,
    cu_seqlens=None,
    max_seqlens=None,
    *,
    variant: str | None = None,
    config: tuple | None = None,
):
    """(out, lse). Padded: q (B, Hq, Nq, D), k/v (B, Hkv, Nk, D); lse (B, Hq, Nq). Packed (cu_seqlens =
    (cu_q, cu_k) int32, max_seqlens = (max_q, max_k)): q (Tq, Hq, D), k/v (Tk, Hkv, D); lse (Hq, Tq).
    out is contiguous in q's layout and dtype; lse is fp32, base 2, +inf where a query sees no key. variant: see
    _take_tma (packed layouts included: their descriptors are _tma_view's); config: one FwdVariant for the TMA
    kernel instead of autotuning (tests)."""
    packed = cu_seqlens is not None
    D, Hq, Hkv = q.shape[-1], q.shape[-2 if packed else 1], k.shape[-2 if packed else 1]
    out = utils.empty_output(q.shape, q)
    if packed:
        batch, (Nq, Nk) = cu_seqlens[0].numel() - 1, max_seqlens
        lse = torch.empty((Hq, q.shape[0]), device=q.device, dtype=torch.float32)
        lse_strides = (0, lse.stride(0))
        cu_q, cu_k = cu_seqlens
    else:
        batch, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
        lse = torch.empty((batch, Hq, Nq), device=q.device, dtype=torch.float32)
        lse_strides = (lse.stride(0), lse.stride(1))
        cu_q = cu_k = q  # never read without VARLEN
    if out.numel() == 0 or batch == 0 or Nq == 0 or k.numel() == 0:  # (a TMA descriptor cannot have an empty dim)
        out.zero_()  # no key anywhere: every query sees none
        lse.fill_(float("inf"))
        return out, lse
    mask, smb, smn, has_mask = _mask_args(key_padding_mask, q)
    meta = _launch_meta("fwd", causal, has_mask, packed, D, q.dtype)
    if _take_tma(variant, q, k, v, rows=meta["BLOCK_M"]):
        strides = (*_layout(out, packed), smb, smn, *lse_strides)
        sizes = (batch, Hq, Hkv, Nq, Nk, D)
        _launch_fwd_tma(q, k, v, mask, out, lse, (cu_q, cu_k), sizes, strides, scale, meta, config)
        return out, lse
    _attention_fwd_kernel[(triton.cdiv(Nq, meta["BLOCK_M"]), batch * Hq)](
        q,
        k,
        v,
        mask,
        out,
        lse,
        cu_q,
        cu_k,
        Hq,
        Nq,
        Nk,
        D,
        Hq // Hkv,
        *_layout(q, packed),
        *_layout(k, packed),
        *_layout(v, packed),
        *_layout(out, packed),
        smb,
        smn,
        *lse_strides,
        scale * 1.4426950408889634,
        **meta,
    )
    return out, lse


def attention_bwd(
    grad_out,
    q,
    k,
    v,
    out,
    lse,
    key_padding_mask,
    causal: bool,
    scale: float,
    cu_seqlens=None,
    max_seqlens=None,
    *,
    variant: str | None = None,
):
    """(dq, dk, dv) in the inputs' layouts and dtypes; dk, dv summed over each GQA group. variant: see _take_tma,
    for each of the two kernels (packed layouts included)."""
    packed = cu_seqlens is not None
    D, Hq, Hkv = q.shape[-1], q.shape[-2 if packed else 1], k.shape[-2 if packed else 1]
    group = Hq // Hkv
    # The kernels address dO and dq with q's strides: give all three the contiguous layout.
    grad_out, q = grad_out.contiguous(), q.contiguous()
    dq = utils.empty_output(q.shape, q)
    if packed:
        batch, (Nq, Nk) = cu_seqlens[0].numel() - 1, max_seqlens
        dk = torch.zeros((k.shape[0], Hq, D), device=q.device, dtype=torch.float32)
        lse_strides = (0, lse.stride(0))
        cu_q, cu_k = cu_seqlens
        delta = (grad_out.float() * out.float()).sum(-1).t().contiguous()  # (Hq, Tq)
    else:
        batch, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
        dk = torch.zeros((batch, Hq, Nk, D), device=q.device, dtype=torch.float32)
        lse_strides = (lse.stride(0), lse.stride(1))
        cu_q = cu_k = q
        delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O), (B, Hq, Nq)
    dv = torch.zeros_like(dk)
    if q.numel() == 0 or k.numel() == 0 or batch == 0:
        dq.zero_()
    else:
        mask, smb, smn, has_mask = _mask_args(key_padding_mask, q)
        strides = (*_layout(q, packed), *_layout(k, packed), *_layout(v, packed), smb, smn, *lse_strides)
        args = (Hq, Nq, Nk, D, group, *strides)
        scales = (scale * 1.4426950408889634, scale)
        meta = _launch_meta("dkdv", causal, has_mask, packed, D, q.dtype)
        grid = (triton.cdiv(Nk, meta["BLOCK_N"]), batch * Hq)
        if _take_tma(variant, q, k, v, grad_out, rows=meta["BLOCK_N"]):
            rows = [meta[n] for n in ("BLOCK_M", "BLOCK_N", "BLOCK_N", "BLOCK_M")]
            descriptors = _descriptors((q, k, v, grad_out), rows, packed)
            tail = (smb, smn, *lse_strides, *_layout(dk, packed), *scales)
            _attention_bwd_dkdv_tma_kernel[grid](
                *descriptors, mask, lse, delta, dk, dv, cu_q, cu_k, Hq, Nq, Nk, D, group, *tail, **meta
            )
        else:
            _attention_bwd_dkdv_kernel[grid](
                q, k, v, mask, grad_out, lse, delta, dk, dv, cu_q, cu_k, *args, *_layout(dk, packed), *scales, **meta
            )
        meta = _launch_meta("dq", causal, has_mask, packed, D, q.dtype)
        grid = (triton.cdiv(Nq, meta["BLOCK_M"]), batch * Hq)
        if _take_tma(variant, q, k, v, grad_out, rows=meta["BLOCK_M"]):
            rows = [meta[n] for n in ("BLOCK_M", "BLOCK_N", "BLOCK_N", "BLOCK_M")]
            descriptors = _descriptors((q, k, v, grad_out), rows, packed)
            tail = (smb, smn, *lse_strides, *_layout(dq, packed), *scales)
            _attention_bwd_dq_tma_kernel[grid](
                *descriptors, mask, lse, delta, dq, cu_q, cu_k, Hq, Nq, Nk, D, group, *tail, **meta
            )
        else:
            _attention_bwd_dq_kernel[grid](q, k, v, mask, grad_out, lse, delta, dq, cu_q, cu_k, *args, *scales, **meta)
    if packed:  # (Tk, Hq, D) -> (Tk, Hkv, D)
        dk, dv = (t.view(t.shape[0], Hkv, group, D).sum(2) for t in (dk, dv))
    else:  # (B, Hq, Nk, D) -> (B, Hkv, Nk, D)
        dk, dv = (t.view(t.shape[0], Hkv, group, t.shape[2], D).sum(2) for t in (dk, dv))
    return dq, dk.to(k.dtype), dv.to(v.dtype)
