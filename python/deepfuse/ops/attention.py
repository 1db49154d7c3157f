"""attention: softmax(q k^T * scale + masks) v, flash-style (no N x N matrix in memory), forward and backward.

Same result as F.scaled_dot_product_attention (``is_causal`` top-left aligned; scale 1/sqrt(D) by
default) with GQA/MQA (Hq a multiple of Hkv) and a key-padding mask (B, Nk) bool, True = ignore the key
(nn.MultiheadAttention's convention). A query whose keys are all masked outputs zeros, never NaN
(SDPA would return NaN), and its gradients are zero.

dtypes: float16, bfloat16 and float32 on the kernels (fp32 inputs use IEEE fp32 dots unless torch
allows TF32), float64 on torch. Backward is deterministic on every backend. The CUDA C++ twin
(csrc/attention.cu) takes the padded and the varlen layouts, head dims up to 256 (float32: 128).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deepfuse import backend as _backend
from deepfuse.kernels import utils as _kernel_utils
from deepfuse.ops._dispatch import fused_op, torch_path
from deepfuse.ops._interop import accepts_cupy
from deepfuse.ops._shared import autocast_inputs, pointer
from deepfuse.ops._validation import (
    FLOAT_DTYPES,
    PLAIN_TENSORS,
    check_same_dtype_and_device,
    check_tensor,
    kernel_dtype_reason,
)

MAX_HEAD_DIM = 256
# The CUDA C++ kernels' limits (csrc/attention.cu): fp32's SIMT tiles would not fit shared memory past 128.
CUDA_MAX_HEAD_DIM = {torch.float16: 256, torch.bfloat16: 256, torch.float32: 128}


def _masked_scores(q, k, causal, key_padding_mask, scale):
    """(scores (B, Hq, Nq, Nk) with -inf where masked, whether each query sees any key); GQA-expanded k."""
    B, Hq, Nq, D = q.shape
    k = _expand_heads(k, Hq)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale
    visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril()
    visible = visible.expand(B, 1, *visible.shape)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    return scores.masked_fill(~visible, float("-inf")), visible.any(-1, keepdim=True)


def _probs(q, k, causal, key_padding_mask, scale):
    """Attention probabilities; all-masked rows are zero."""
    scores, any_visible = _masked_scores(q, k, causal, key_padding_mask, scale)
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1)
    return torch.where(any_visible, probs, 0.0)


def _expand_heads(t, heads):
    group = heads // t.shape[1]
    return t.repeat_interleave(group, dim=1) if group > 1 else t


def attention_ref(q, k, v, *, causal=False, key_padding_mask=None, scale=None):
    """The spec in plain torch (materialises the scores): SDPA's math with fully-masked rows set to zero."""
    return _probs(q, k, causal, key_padding_mask, scale).to(v.dtype) @ _expand_heads(v, q.shape[1])


def _attention_grads_ref(grad_out, q, k, v, causal, key_padding_mask, scale):
    """(dq, dk, dv) of attention_ref in closed form, computed in at least fp32 (custom-op implementations run
    below autograd, so they cannot call it)."""
    compute = torch.promote_types(q.dtype, torch.float32)
    qc, kc, vc, go = (t.to(compute) for t in (q, k, v, grad_out))
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    probs = _probs(qc, kc, causal, key_padding_mask, scale)
    k_full, v_full = _expand_heads(kc, Hq), _expand_heads(vc, Hq)
    grad_probs = go @ v_full.transpose(-1, -2)
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True)) * scale
    dq = grad_scores @ k_full
    dk = (grad_scores.transpose(-1, -2) @ qc).view(B, Hkv, Hq // Hkv, Nk, D).sum(2)
    dv = (probs.transpose(-1, -2) @ go).view(B, Hkv, Hq // Hkv, Nk, D).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _sdpa_mask(key_padding_mask, causal, Nq, Nk, device):
    """(SDPA's boolean attn_mask, True = attend; whether each query row sees any key), both broadcastable to
    (B, H, Nq, Nk). Rows that see no key are given every key (SDPA would return NaN), then zeroed by the caller."""
    visible = ~key_padding_mask[:, None, None, :]
    if causal:
        visible = visible & torch.ones(Nq, Nk, dtype=torch.bool, device=device).tril()
    any_visible = visible.any(-1, keepdim=True)
    return visible | ~any_visible, any_visible


def _attention_torch(q, k, v, key_padding_mask, causal, scale):
    """The torch backend: F.scaled_dot_product_attention (its flash/efficient kernels, its own backward), with
    fully masked queries set to zero as the kernels do."""
    gqa = q.shape[1] != k.shape[1]
    if key_padding_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
    mask, any_visible = _sdpa_mask(key_padding_mask, causal, q.shape[2], k.shape[2], q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out.masked_fill(~any_visible, 0.0)


def _varlen_positions(cu_seqlens, total):
    """(sequence, position within it) of every packed token, computed on the device (no host copy)."""
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True)
    return sequence, tokens - cu_seqlens[sequence]


def _attention_varlen_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    """The torch backend of attention_varlen: the packed sequences scattered into a padded batch, one SDPA call with
    a key-padding mask, gathered back (differentiable end to end; no loop over sequences)."""
    batch = cu_seqlens_q.shape[0] - 1
    # Each packed token's row in the padded batch flattened to (batch * length) rows: sequence * length + position.
    seq_q, pos_q = _varlen_positions(cu_seqlens_q, q.shape[0])
    seq_k, pos_k = _varlen_positions(cu_seqlens_k, k.shape[0])
    rows_q = seq_q.long() * max_seqlen_q + pos_q.long()
    rows_k = seq_k.long() * max_seqlen_k + pos_k.long()

    # NOTE: index_copy / index_select over flat rows instead of index_put / indexing with (sequence, position) pairs:
    # one tensor's scatter + gather, forward and backward, at the IMDb Transformer's shapes (12,390 tokens, 4 x 32,
    # 64 x 256 padded) 3.6 -> 2.8 ms in fp32 and 4.0 -> 1.7 ms in bf16, one thread of a Zen 5 (2026-12-05); that
    # model's whole bf16 training step did not move beyond its noise (CPU ms, 2 alternated rounds: 333 / 347 -> 338 /
    # 346, benchmarks/time_sentiment_step.py).
    def padded(t, rows, length):  # (total, H, D) -> (batch, H, length, D)
        out = t.new_zeros((batch * length, *t.shape[1:])).index_copy(0, rows, t)
        return out.view(batch, length, *t.shape[1:]).transpose(1, 2)

    lengths_k = (cu_seqlens_k[1:] - cu_seqlens_k[:-1])[:, None]
    key_padding_mask = torch.arange(max_seqlen_k, device=q.device)[None, :] >= lengths_k
    out = _attention_torch(
        padded(q, rows_q, max_seqlen_q),
        padded(k, rows_k, max_seqlen_k),
        padded(v, rows_k, max_seqlen_k),
        key_padding_mask,
        causal,
        scale,
    )
    return out.transpose(1, 2).reshape(batch * max_seqlen_q, out.shape[1], out.shape[3]).index_select(0, rows_q)


# ---------------------------------------------------------------------------------------------
# Backend implementations
# ---------------------------------------------------------------------------------------------


def _fwd_torch(q, k, v, key_padding_mask, causal, scale):
    out = attention_ref(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale)
    # The same log-sum-exp (base 2, +inf for rows with no visible key) as the kernels save.
    scores, any_visible = _masked_scores(q.float(), k.float(), causal, key_padding_mask, scale)
    lse = torch.logsumexp(scores.masked_fill(~any_visible, 0.0), dim=-1) * 1.4426950408889634
    lse = torch.where(any_visible.squeeze(-1), lse, float("inf"))
    return out.contiguous(), lse.contiguous()


def _bwd_torch(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale):
    return tuple(g.contiguous() for g in _attention_grads_ref(grad_out, q, k, v, causal, key_padding_mask, scale))


def _fwd_triton(q, k, v, key_padding_mask, causal, scale):
    from deepfuse.kernels.attention import attention_fwd

    return attention_fwd(q, k, v, key_padding_mask, causal, scale)


def _bwd_triton(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale):
    from deepfuse.kernels.attention import attention_bwd

    dq, dk, dv = attention_bwd(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale)
    return dq, dk.contiguous(), dv.contiguous()


def _sequences(cu_seqlens_q, cu_seqlens_k):
    """(q slice, k slice) of every packed sequence."""
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    return [(slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])) for i in range(len(cu_q) - 1)]


def _as_batch(t):  # (T, H, D) -> (1, H, T, D)
    return t.transpose(0, 1).unsqueeze(0)


def _varlen_fwd_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale):
    out = torch.zeros_like(q)
    lse = torch.full((q.shape[1], q.shape[0]), float("inf"), device=q.device, dtype=torch.float32)
    for sq, sk in _sequences(cu_seqlens_q, cu_seqlens_k):
        seq_out, seq_lse = _fwd_torch(_as_batch(q[sq]), _as_batch(k[sk]), _as_batch(v[sk]), None, causal, scale)
        out[sq] = seq_out[0].transpose(0, 1)
        lse[:, sq] = seq_lse[0]
    return out, lse


def _varlen_bwd_torch(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale):
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for sq, sk in _sequences(cu_seqlens_q, cu_seqlens_k):
        grads = _attention_grads_ref(
            _as_batch(grad_out[sq]), _as_batch(q[sq]), _as_batch(k[sk]), _as_batch(v[sk]), causal, None, scale
        )
        for full, grad, rows in zip((dq, dk, dv), grads, (sq, sk, sk), strict=True):
            full[rows] = grad[0].transpose(0, 1)
    return dq, dk, dv


def _varlen_fwd_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, max_seqlens):
    from deepfuse.kernels.attention import attention_fwd

    return attention_fwd(q, k, v, None, causal, scale, (cu_seqlens_q, cu_seqlens_k), max_seqlens)


def _varlen_bwd_triton(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, scale, max_seqlens):
    from deepfuse.kernels.attention import attention_bwd

    dq, dk, dv = attention_bwd(
        grad_out, q, k, v, out, lse, None, causal, scale, (cu_seqlens_q, cu_seqlens_k), max_seqlens
    )
    return dq, dk.contiguous(), dv.contiguous()


def _cuda_mask(key_padding_mask):
    """(uint8 mask or None, its (batch, key) strides) as deepfuse._C takes them."""
    if key_padding_mask is None:
        return None, [0, 0]
    mask = key_padding_mask.to(torch.uint8)
    return mask, list(mask.stride())


def _cuda_sizes(q, k):
    B, Hq, Nq, D = q.shape
    return [B, Hq, k.shape[1], Nq, k.shape[2], D]


def _fwd_cuda(q, k, v, key_padding_mask, causal, scale):
    from deepfuse import _C

    out = _kernel_utils.empty_output(q.shape, q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    if q.numel() == 0:
        lse.fill_(float("inf"))
        return out, lse
    mask, mask_strides = _cuda_mask(key_padding_mask)
    with torch.cuda.device(q.device):
        _C.attention_fwd(
            pointer(q),
            list(q.stride()),
            pointer(k),
            list(k.stride()),
            pointer(v),
            list(v.stride()),
            pointer(mask),
            mask_strides,
            pointer(out),
            pointer(lse),
            _cuda_sizes(q, k),
            scale,
            causal,
            _backend.DTYPE_CODES[q.dtype],
            torch.cuda.current_stream().cuda_stream,
        )
    return out, lse


def _bwd_cuda(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale):
    from deepfuse import _C

    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    if q.numel() == 0 or k.numel() == 0:
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    dq = _kernel_utils.empty_output(q.shape, q)
    # dK, dV per query head in fp32 (like lse); the kernel writes every element, the groups are summed below.
    dk = _kernel_utils.empty_output((B, Hq, Nk, D), lse)
    dv = _kernel_utils.empty_output((B, Hq, Nk, D), lse)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # rowsum(dO * O), (B, Hq, Nq)
    lse = lse.contiguous()
    mask, mask_strides = _cuda_mask(key_padding_mask)
    with torch.cuda.device(q.device):
        _C.attention_bwd(
            pointer(grad_out),
            list(grad_out.stride()),
            pointer(q),
            list(q.stride()),
            pointer(k),
            list(k.stride()),
            pointer(v),
            list(v.stride()),
            pointer(mask),
            mask_strides,
            pointer(lse),
            pointer(delta),
            pointer(dq),
            pointer(dk),
            pointer(dv),
            _cuda_sizes(q, k),
            scale,
            causal,
            _backend.DTYPE_CODES[q.dtype],
            torch.cuda.current_stream().cuda_stream,
        )
    dk, dv = (t.view(B, Hkv, Hq // Hkv, Nk, D).sum(2) for t in (dk, dv))  # (B, Hq, ...) -> (B, Hkv, ...)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def _packed_strides(t):
    """(T, H, D) addressed as (1, H, T, D): the (batch, head, token, dim) strides deepfuse._C takes."""
    return [0, t.stride(1), t.stride(0), t.stride(2)]


def _varlen_cuda_sizes(q, k, cu_seqlens_q, max_seqlens):
    max_seqlen_q, max_seqlen_k = max_seqlens
    return [cu_seqlens_q.numel() - 1, q.shape[1], k.shape[1], max_seqlen_q, max_seqlen_k, q.shape[2]]


def _varlen_fwd_cuda(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, max_seqlens):
    from deepfuse import _C

    out = _kernel_utils.empty_output(q.shape, q)
    lse = torch.empty((q.shape[1], q.shape[0]), device=q.device, dtype=torch.float32)
    if q.numel() == 0 or k.numel() == 0:  # no query, or no key for any query: zeros and +inf
        out.zero_()
        lse.fill_(float("inf"))
        return out, lse
    cu_q, cu_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    with torch.cuda.device(q.device):
        _C.attention_fwd(
            pointer(q),
            _packed_strides(q),
            pointer(k),
            _packed_strides(k),
            pointer(v),
            _packed_strides(v),
            0,
            [0, 0],
            pointer(out),
            pointer(lse),
            _varlen_cuda_sizes(q, k, cu_q, max_seqlens),
            scale,
            causal,
            _backend.DTYPE_CODES[q.dtype],
            torch.cuda.current_stream().cuda_stream,
            cu_seqlens_q=pointer(cu_q),
            cu_seqlens_k=pointer(cu_k),
            total_q=q.shape[0],
        )
    return out, lse


def _varlen_bwd_cuda(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, scale, max_seqlens):
    from deepfuse import _C

    Tq, Hq, D = q.shape
    Tk, Hkv = k.shape[:2]
    if q.numel() == 0 or k.numel() == 0:
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)
    dq = _kernel_utils.empty_output(q.shape, q)
    # dK, dV per query head in fp32, (Tk, Hq, D): every key token belongs to one sequence, so all are written.
    dk = _kernel_utils.empty_output((Tk, Hq, D), lse)
    dv = _kernel_utils.empty_output((Tk, Hq, D), lse)
    delta = (grad_out.float() * out.float()).sum(-1).t().contiguous()  # rowsum(dO * O), (Hq, Tq) like lse
    lse = lse.contiguous()
    cu_q, cu_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    with torch.cuda.device(q.device):
        _C.attention_bwd(
            pointer(grad_out),
            _packed_strides(grad_out),
            pointer(q),
            _packed_strides(q),
            pointer(k),
            _packed_strides(k),
            pointer(v),
            _packed_strides(v),
            0,
            [0, 0],
            pointer(lse),
            pointer(delta),
            pointer(dq),
            pointer(dk),
            pointer(dv),
            _varlen_cuda_sizes(q, k, cu_q, max_seqlens),
            scale,
            causal,
            _backend.DTYPE_CODES[q.dtype],
            torch.cuda.current_stream().cuda_stream,
            cu_seqlens_q=pointer(cu_q),
            cu_seqlens_k=pointer(cu_k),
            total_q=Tq,
        )
    dk, dv = (t.view(Tk, Hkv, Hq // Hkv, D).sum(2) for t in (dk, dv))  # (Tk, Hq, D) -> (Tk, Hkv, D)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


_FWD = {"torch": _fwd_torch, "triton": _fwd_triton, "cuda": _fwd_cuda}
_BWD = {"torch": _bwd_torch, "triton": _bwd_triton, "cuda": _bwd_cuda}


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------


def _cost(q, k):
    """FlashAttention's count: 4 * B * Hq * Nq * Nk * D forward (causal not halved); q, k, v read, out written."""
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    return 4 * B * Hq * Nq * Nk * D, q.element_size() * (2 * q.numel() + 2 * k.numel())


def _fwd_cost(q, k, v, key_padding_mask, causal, scale, backend):
    return _cost(q, k)


def _torch_cost(q, k, v, key_padding_mask, causal, scale):
    return _cost(q, k)


def _varlen_torch_cost(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale):
    return _varlen_fwd_cost(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, "torch")


@fused_op("attention_fwd", cost=_fwd_cost)
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, Hq, Nq, D) contiguous, lse (B, Hq, Nq) fp32)."""
    return _FWD[backend](q, k, v, key_padding_mask, causal, scale)


@attention_fwd.register_fake
def _(q, k, v, key_padding_mask, causal, scale, backend):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


def _bwd_cost(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale, backend):
    flops, min_bytes = _cost(q, k)
    return 2.5 * flops, 2 * min_bytes


@fused_op("attention_bwd", cost=_bwd_cost)
def attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous, in the inputs' dtypes."""
    return _BWD[backend](grad_out, q, k, v, out, lse, key_padding_mask, causal, scale)


@attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, causal, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
    ctx.causal, ctx.scale, ctx.backend = causal, scale, backend


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = attention_bwd(grad_out, q, k, v, out, lse, key_padding_mask, ctx.causal, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None, None


attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _varlen_fwd_cost(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, backend):
    flops = 4 * q.shape[1] * q.shape[2] * max_seqlen_k * q.shape[0]  # an upper bound: every query sees max_seqlen_k
    return flops, q.element_size() * (2 * q.numel() + 2 * k.numel())


@fused_op("attention_varlen_fwd", cost=_varlen_fwd_cost)
def attention_varlen_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (Tq, Hq, D), lse (Hq, Tq) fp32) for packed sequences."""
    if backend == "torch":
        return _varlen_fwd_torch(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    varlen_fwd = _varlen_fwd_cuda if backend == "cuda" else _varlen_fwd_triton
    return varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, (max_seqlen_q, max_seqlen_k))


@attention_varlen_fwd.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, backend):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _varlen_bwd_cost(
    grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, backend
):
    flops, min_bytes = _varlen_fwd_cost(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, backend
    )
    return 2.5 * flops, 2 * min_bytes


@fused_op("attention_varlen_bwd", cost=_varlen_bwd_cost)
def attention_varlen_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for packed sequences."""
    if backend == "torch":
        return _varlen_bwd_torch(grad_out, q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)
    varlen_bwd = _varlen_bwd_cuda if backend == "cuda" else _varlen_bwd_triton
    return varlen_bwd(
        grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, causal, scale, (max_seqlen_q, max_seqlen_k)
    )


@attention_varlen_bwd.register_fake
def _(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _varlen_setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k)
    ctx.options = (max_seqlen_q, max_seqlen_k, causal, scale, backend)


def _varlen_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    dq, dk, dv = attention_varlen_bwd(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, *ctx.options)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_varlen_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup_context)


# ---------------------------------------------------------------------------------------------
# Dispatch rules and the public function
# ---------------------------------------------------------------------------------------------


def _supports(backend, q, k, *args, **kwargs):
    if backend == "torch":
        return None
    if backend == "cuda":  # the padded (B, H, N, D) and attention_varlen's packed (total, H, D) layouts alike
        reason = kernel_dtype_reason("q", q)
        if reason is not None:
            return reason
        limit = CUDA_MAX_HEAD_DIM[q.dtype]
        if q.shape[-1] > limit:
            return f"q's head dim is {q.shape[-1]}; the cuda kernel takes {q.dtype} head dims up to {limit}"
        return None
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"q's head dim is {q.shape[-1]}; the triton kernel takes head dims up to {MAX_HEAD_DIM}"
    return kernel_dtype_reason("q", q)


def _preference(q, k, *args, **kwargs):
    # Not yet measured on a GPU: Triton's flash kernel, then the CUDA C++ one, for the half types; fp32 and the
    # rest use torch.
    return ("triton", "cuda", "torch") if q.dtype in (torch.float16, torch.bfloat16) else ("torch",)


_backend.register_op(_backend.OpSpec("attention", _supports, _preference, lambda q, *a, **k: q.device))


def _validate(q, k, v, key_padding_mask):
    plain = q.__class__ in PLAIN_TENSORS and k.__class__ in PLAIN_TENSORS and v.__class__ in PLAIN_TENSORS
    if not (plain and q.ndim == k.ndim == v.ndim == 4 and q.dtype in FLOAT_DTYPES):  # else say which is wrong
        check_tensor("q", q, ndim=4)
        check_tensor("k", k, ndim=4)
        check_tensor("v", v, ndim=4)
    B, Hq, Nq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"k must be (batch={B}, kv_heads, Nk, head_dim={D}) to match q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if k.shape[1] == 0 or Hq % k.shape[1] != 0:
        raise ValueError(f"q's heads ({Hq}) must be a multiple of k's heads ({k.shape[1]}) (GQA/MQA)")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError(
                "key_padding_mask must be a bool tensor (True = ignore that key), got "
                f"{getattr(key_padding_mask, 'dtype', type(key_padding_mask).__name__)}"
            )
        if key_padding_mask.shape != (B, k.shape[2]):
            raise ValueError(
                f"key_padding_mask must have shape (batch={B}, Nk={k.shape[2]}), got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but q is on {q.device}")


@accepts_cupy
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """softmax(q @ k^T * scale, masked) @ v without materialising the scores.

    Args:
        q: (B, Hq, Nq, D); k, v: (B, Hkv, Nk, D) with Hq a multiple of Hkv (GQA/MQA).
        causal: key j is visible to query i when j <= i (SDPA's is_causal alignment).
        key_padding_mask: (B, Nk) bool, True marks a padded key to ignore. Queries with no visible key
            output zeros.
        scale: default 1/sqrt(D).
        backend: "torch", "triton", "cuda" or None (automatic).

    Returns: (B, Hq, Nq, D) in q's dtype (autocast dtype under autocast).

    Equivalent PyTorch: attention_ref (= F.scaled_dot_product_attention where no row is fully masked)
    """
    _validate(q, k, v, key_padding_mask)
    q, k, v = autocast_inputs(q, k, v)
    check_same_dtype_and_device("q", q, k=k, v=v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = _backend.choose_backend("attention", backend, q, k)
    if chosen == "torch":  # torch's own differentiable SDPA: its autograd, traced natively by torch.compile
        return torch_path("attention_fwd", _torch_cost, _attention_torch, q, k, v, key_padding_mask, causal, scale)
    out, _ = attention_fwd(q, k, v, key_padding_mask, causal, scale, chosen)
    return out


def _validate_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=3)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[2] != q.shape[2] or k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(
            f"q (total_q, Hq, D) and k (total_k, Hkv, D) need the same D and Hq a multiple of Hkv, "
            f"got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    lengths = {}
    for name, cu, total, max_len in (
        ("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q),
        ("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k),
    ):
        if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.ndim != 1 or cu.numel() < 1:
            raise TypeError(f"{name} must be a 1-D int32 tensor of cumulative lengths starting at 0")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device} but q is on {q.device}")
        check_values = _check_cu_seqlens_on_device if cu.is_cuda else _check_cu_seqlens_on_host
        check_values(name, cu, total, max_len)
        lengths[name] = cu.numel()
    if lengths["cu_seqlens_q"] != lengths["cu_seqlens_k"]:
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"{lengths['cu_seqlens_q'] - 1} and {lengths['cu_seqlens_k'] - 1}"
        )


def _check_cu_seqlens_on_host(name, cu, total, max_len):
    """The values checked with a message that shows them (CPU tensors: no device to wait for)."""
    host = cu.tolist()
    steps = [b - a for a, b in zip(host, host[1:], strict=False)]
    if host[0] != 0 or host[-1] != total or any(step < 0 for step in steps):
        raise ValueError(f"{name} must rise from 0 to the token count {total} without decreasing, got {host}")
    if steps and max(steps) > max_len:
        raise ValueError(f"max_seqlen for {name} is {max_len} but a sequence has {max(steps)} tokens")


def _check_cu_seqlens_on_device(name, cu, total, max_len):
    """The same checks queued on the device (torch._assert_async): reading the values on the host would make every
    call wait for the GPU. A failure surfaces at the next synchronisation, with this message."""
    steps = cu[1:] - cu[:-1]
    valid = (cu[0] == 0) & (cu[-1] == total) & (steps >= 0).all() & (steps <= max_len).all()
    torch._assert_async(
        valid,
        f"{name} must rise from 0 to the token count {total} without decreasing, in steps of at most "
        f"max_seqlen = {max_len}",
    )


@accepts_cupy
def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over packed variable-length sequences: no work is spent on padding.

    Args:
        q: (total_q, Hq, D); k, v: (total_k, Hkv, D), the sequences one after another.
        cu_seqlens_q, cu_seqlens_k: (num_seqs + 1,) int32 cumulative lengths, from 0 to total.
        max_seqlen_q, max_seqlen_k: the longest sequence (sizes the launch grid).
        causal, scale, backend: as in attention().

    Returns: (total_q, Hq, D). cu_seqlens are checked on the host for CPU tensors; on a GPU the checks are queued
    on the device (nothing waits for it) and a bad value fails at the next synchronisation.

    Equivalent PyTorch: attention_ref on each sequence.
    """
    _validate_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    q, k, v = autocast_inputs(q, k, v)
    check_same_dtype_and_device("q", q, k=k, v=v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    chosen = _backend.choose_backend("attention", backend, q, k)
    if chosen == "torch":  # as in attention(): torch's own differentiable ops
        return torch_path(
            "attention_varlen_fwd",
            _varlen_torch_cost,
            _attention_varlen_torch,
            q,
            k,
            v,
            cu_seqlens_q,
            cu_seqlens_k,
            int(max_seqlen_q),
            int(max_seqlen_k),
            causal,
            scale,
        )
    out, _ = attention_varlen_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), causal, scale, chosen
    )
    return out
