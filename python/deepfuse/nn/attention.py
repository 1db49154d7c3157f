"""MultiheadAttention and TransformerEncoderLayer drop-ins built on deepfuse's flash attention and FusedLinear.

Both keep torch's parameters and state_dict. A call the fused path cannot run (arbitrary attention masks, float
key-padding masks, add_bias_kv / add_zero_attn, attention dropout while training) raises BackendUnavailableError
when triton or cuda was requested, and otherwise runs torch's own implementation, recorded with its reason
(``deepfuse.backend.record_choices``; the run's layer report). MultiheadAttention's docstring lists the conditions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepfuse.backend import BackendUnavailableError, record_fallback, requested_backend
from deepfuse.nn.linear import FusedLinear
from deepfuse.ops.activations import activation_name
from deepfuse.ops.attention import attention, attention_varlen
from deepfuse.ops.linear_act import linear_act

# The op name under which MultiheadAttention records a call run by torch's implementation instead of its fused path.
TORCH_PATH_OP = "multihead_attention"
# ... and the second pass that computes the attention weights for need_weights=True.
WEIGHTS_OP = "attention_weights"


def _check_shapes(query, key, value, key_padding_mask) -> bool:
    """Whether the call is batched; torch's shape rules (F.multi_head_attention_forward), as ValueErrors."""
    if query.dim() not in (2, 3):
        raise ValueError(f"query must be unbatched 2-D (L, E) or batched 3-D, got shape {tuple(query.shape)}")
    batched = query.dim() == 3
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(
            f"key and value must be {query.dim()}-D like query, got shapes {tuple(key.shape)} and {tuple(value.shape)}"
        )
    if key_padding_mask is not None and key_padding_mask.dim() != (2 if batched else 1):
        raise ValueError(
            f"key_padding_mask must be {'(N, S)' if batched else '(S,) for an unbatched query'}, "
            f"got shape {tuple(key_padding_mask.shape)}"
        )
    return batched


def _causal_mask(query, key, batch_first: bool) -> torch.Tensor:
    """The (L, S) bool mask of is_causal (True = hidden), for torch's implementation."""
    dim = 0 if query.dim() == 2 or not batch_first else 1
    return torch.ones(query.shape[dim], key.shape[dim], dtype=torch.bool, device=query.device).triu(1)


def _attention_weights(q, k, causal: bool, key_padding_mask, average: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) with the fused path's masks, (B, H, L, S), or head-averaged (B, L, S); in at least
    float32, returned in q's dtype. A query with no visible key gets zero weights (its fused output is zero)."""
    compute = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    visible = (visible.tril() if causal else visible).expand(q.shape[0], 1, *visible.shape)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    any_visible = visible.any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")).masked_fill(~any_visible, 0.0), dim=-1)
    weights = torch.where(any_visible, weights, 0.0)
    return (weights.mean(1) if average else weights).to(q.dtype)


def _allow_torch_path(problem: str) -> None:
    """Raise where a kernel backend was requested (it cannot run the call), else record the torch path's reason."""
    requested, source = requested_backend(None)
    if requested not in (None, "torch"):
        raise BackendUnavailableError(
            f"MultiheadAttention: backend {requested!r} (from {source}) cannot run this call: {problem} "
            "(use_backend('auto') or 'torch' runs torch's implementation)"
        )
    record_fallback(TORCH_PATH_OP, "torch", problem)


def _check_packed(x: torch.Tensor, cu_seqlens: torch.Tensor, embed_dim: int) -> None:
    """forward_packed's input rules as ValueErrors (attention_varlen checks cu_seqlens against max_seqlen)."""
    if x.dim() != 2 or x.shape[1] != embed_dim:
        raise ValueError(f"x must be packed tokens (T, {embed_dim}), got shape {tuple(x.shape)}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError("cu_seqlens must be a 1-D tensor of cumulative lengths, from 0 to the token count")


def _pad_packed(x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed tokens (T, E) as a zero-padded batch (B, max_seqlen, E) and its (B, max_seqlen) bool mask of real
    tokens (``padded[valid]`` gives x back)."""
    lengths = cu_seqlens.diff().long()
    if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != x.shape[0] or bool((lengths < 0).any()):
        raise ValueError(f"cu_seqlens must rise from 0 to the token count {x.shape[0]}, got {cu_seqlens.tolist()}")
    if lengths.numel() and int(lengths.max()) > max_seqlen:
        raise ValueError(f"max_seqlen is {max_seqlen} but a sequence has {int(lengths.max())} tokens")
    valid = torch.arange(max_seqlen, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    padded = x.new_zeros(lengths.numel(), max_seqlen, x.shape[1])
    padded[valid] = x
    return padded, valid


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in for ``nn.MultiheadAttention`` (same constructor, parameters and forward signature).

    Fused path: the projections through linear_act and the attention through the flash kernel
    (``deepfuse.ops.attention``), on the backend deepfuse's dispatch picks (``use_backend`` / ``DEEPFUSE_BACKEND`` /
    automatic). It takes key_padding_mask None or bool, is_causal=True (with or without attn_mask: the hint is
    trusted, as torch's SDPA path does), kdim/vdim different from embed_dim, and unbatched (L, E) inputs
    (``batch_first`` then ignored, as in torch).

    ``need_weights=True`` (torch's default) stays on the fused path: the output comes from the kernel, and the
    weights from a second pass over the same projected q and k in plain torch ops (softmax(q k^T / sqrt(D)) with
    the same masks; head-averaged unless ``average_attn_weights=False``), recorded as ``attention_weights: torch``.
    It costs an (N, H, L, S) tensor, as torch's own path does.

    Calls the fused path cannot run, and why:

    - ``attn_mask`` without ``is_causal=True`` (bool or float, (L, S) or (N*H, L, S)): the kernel takes only the
      causal mask and a key-padding mask;
    - a float ``key_padding_mask``: the kernel takes a bool mask;
    - ``add_bias_kv=True`` or ``add_zero_attn=True``: the kernel has no appended key/value row;
    - training with ``dropout > 0``: the flash kernels have no attention dropout.

    For these, under ``use_backend("triton")`` / ``"cuda"`` (or ``DEEPFUSE_BACKEND``) the call raises
    BackendUnavailableError with the reason; under the automatic choice or ``"torch"`` torch's implementation runs
    and the call is recorded as ``multihead_attention: torch`` with the reason (``record_choices().reasons``; the
    run's layer report). The attention op's own limits (head dim, dtype) are the op's: it raises for a requested
    backend and chooses another automatically, as every deepfuse op does.

    One extension: ``is_causal=True`` without ``attn_mask`` (torch raises) means the causal mask on every path.
    A query whose keys are all masked gets zeros (and zero weights) on the fused path (torch gives NaN).

    ``forward_packed(x, cu_seqlens, max_seqlen)`` is self-attention over packed variable-length sequences (no
    padding, no work on padding), through ``deepfuse.ops.attention_varlen``.
    """

    def fused_path_problem(self, key_padding_mask=None, attn_mask=None, is_causal=False) -> str | None:
        """Why the fused path cannot run a call with these arguments in the current mode, or None when it can."""
        if attn_mask is not None and not is_causal:
            kind = "float" if torch.is_floating_point(attn_mask) else "bool"
            return (
                f"a {kind} attn_mask: the flash kernel takes only the causal mask (is_causal=True) and a bool "
                "key_padding_mask"
            )
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            return f"a {key_padding_mask.dtype} key_padding_mask: the flash kernel takes a bool mask"
        if self.bias_k is not None:
            return "add_bias_kv=True: the flash kernel has no appended key/value row"
        if self.add_zero_attn:
            return "add_zero_attn=True: the flash kernel has no appended zero key/value row"
        if self.training and self.dropout > 0.0:
            return f"attention dropout {self.dropout} in training: the flash kernels have no dropout"
        return None

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        problem = self.fused_path_problem(key_padding_mask, attn_mask, is_causal)
        if problem is not None:
            _allow_torch_path(problem)
            if is_causal and attn_mask is None:  # torch needs the mask itself
                attn_mask = _causal_mask(query, key, self.batch_first)
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        batched = _check_shapes(query, key, value, key_padding_mask)
        self_attention = query is key and key is value
        # To (N, L, E): an unbatched (L, E) input is one batch row, whatever batch_first says.
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if key.shape[0] != query.shape[0] or value.shape[:2] != key.shape[:2]:
            raise ValueError(
                f"query, key and value must share the batch size, and key and value the sequence "
                f"length; got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)} "
                "as (N, L, E)"
            )
        E, heads = self.embed_dim, self.num_heads
        b = self.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if self_attention:  # one projection GEMM
                q, k, v = linear_act(query, w, b).chunk(3, dim=-1)
            else:
                q, k, v = (
                    linear_act(query, w[:E], b_q),
                    linear_act(key, w[E : 2 * E], b_k),
                    linear_act(value, w[2 * E :], b_v),
                )
        else:
            q = linear_act(query, self.q_proj_weight, b_q)
            k = linear_act(key, self.k_proj_weight, b_k)
            v = linear_act(value, self.v_proj_weight, b_v)
        batch, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
        q = q.reshape(batch, n_q, heads, E // heads).transpose(1, 2)
        k = k.reshape(batch, n_k, heads, E // heads).transpose(1, 2)
        v = v.reshape(batch, n_k, heads, E // heads).transpose(1, 2)
        out = attention(q, k, v, causal=is_causal, key_padding_mask=key_padding_mask)
        out = linear_act(out.transpose(1, 2).reshape(batch, n_q, E), self.out_proj.weight, self.out_proj.bias)
        weights = None
        if need_weights:
            record_fallback(WEIGHTS_OP, "torch", "need_weights=True: the weights come from a second pass in torch ops")
            weights = _attention_weights(q, k, is_causal, key_padding_mask, average_attn_weights)
        if not batched:
            return out.squeeze(0), (None if weights is None else weights.squeeze(0))
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Self-attention of packed sequences: each token attends to the tokens of its own sequence only.

        Args:
            x: (T, E) the sequences' tokens one after another (``batch_first`` does not apply).
            cu_seqlens: (num_seqs + 1,) int32 cumulative lengths, from 0 to T (as ``attention_varlen`` takes them).
            max_seqlen: the longest sequence's length (sizes the kernel's grid).

        Returns: (T, E), the same as ``forward`` on the padded batch with the padding as key_padding_mask, at the
        real tokens. The projections run through linear_act on the T real tokens and the attention through
        ``deepfuse.ops.attention_varlen``. Where the fused path cannot run the call (``add_bias_kv``,
        ``add_zero_attn``, attention dropout in training: see the class docstring) a requested triton / cuda
        backend raises BackendUnavailableError; otherwise torch's implementation runs on the padded batch with a
        key-padding mask, recorded as ``multihead_attention: torch`` with the reason.
        """
        if not self._qkv_same_embed_dim:
            raise ValueError(
                f"forward_packed is self-attention: kdim ({self.kdim}) and vdim ({self.vdim}) must equal embed_dim "
                f"({self.embed_dim})"
            )
        _check_packed(x, cu_seqlens, self.embed_dim)
        problem = self.fused_path_problem()
        if problem is not None:
            _allow_torch_path(problem)
            padded, valid = _pad_packed(x, cu_seqlens, int(max_seqlen))
            padded = padded if self.batch_first else padded.transpose(0, 1)
            out = super().forward(padded, padded, padded, key_padding_mask=~valid, need_weights=False)[0]
            return (out if self.batch_first else out.transpose(0, 1))[valid]
        tokens, width, heads = x.shape[0], self.embed_dim, self.num_heads
        qkv = linear_act(x, self.in_proj_weight, self.in_proj_bias).view(tokens, 3, heads, width // heads)
        q, k, v = qkv.unbind(1)
        out = attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen)
        return linear_act(out.reshape(tokens, width), self.out_proj.weight, self.out_proj.bias)


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """Drop-in for ``nn.TransformerEncoderLayer`` (same constructor and state_dict): self-attention through
    deepfuse.nn.MultiheadAttention and the feed-forward block through FusedLinear, with the activation fused into
    linear1 when it is one linear_act knows (``deepfuse.ops.activations.activation_name``: "relu", "gelu",
    F.relu/F.leaky_relu/F.gelu/F.silu/torch.tanh/torch.sigmoid, nn.ReLU/GELU/SiLU/Tanh/Sigmoid/LeakyReLU(0.01)
    instances); any other callable runs after linear1.
    Unbatched (S, E) inputs, batch_first and norm_first as in torch. torch's inference fast path (nested tensors)
    is not used: nested inputs are padded and run here with a key-padding mask.

    The self-attention's fallbacks are MultiheadAttention's (raise under a requested triton / cuda backend; torch's
    implementation, recorded with the reason, under the automatic choice or torch):

    - ``src_mask`` other than a causal one (``is_causal=True``), or a float ``src_key_padding_mask``;
    - training with ``dropout > 0`` (torch's default 0.1): the flash kernels have no attention dropout. Set
      ``layer.self_attn.dropout = 0.0`` to train on the kernels (dropout1/dropout2 and the feed-forward dropout
      still apply).

    In eval, or with dropout 0, every call runs on the fused path.

    ``forward_packed(x, cu_seqlens, max_seqlen)`` runs the layer on packed variable-length sequences (T, E): the
    self-attention through ``MultiheadAttention.forward_packed`` (its fallbacks as above), the norms and the
    feed-forward block on the T real tokens; it equals ``forward`` on the padded batch with the padding as
    ``src_key_padding_mask``, at the real tokens."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation="relu",
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            d_model,
            nhead,
            dim_feedforward,
            dropout,
            activation,
            layer_norm_eps,
            batch_first,
            norm_first,
            bias,
            device,
            dtype,
        )
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **factory
        )
        fused_activation = activation_name(activation)
        self.linear1 = FusedLinear(
            d_model, dim_feedforward, bias=bias, activation=fused_activation or "none", **factory
        )
        self.linear2 = FusedLinear(dim_feedforward, d_model, bias=bias, **factory)
        # An activation deepfuse cannot fuse (a custom callable) still runs, after linear1.
        self._unfused_activation = None if fused_activation is not None else self.activation

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        if src.is_nested:  # nn.TransformerEncoder's inference fast path hands its layers nested tensors
            return self._forward_nested(src, src_mask, is_causal)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """The layer (pre-LN or post-LN, as built) on packed tokens x (T, E); cu_seqlens (num_seqs + 1,) int32 and
        max_seqlen as ``MultiheadAttention.forward_packed`` takes them. Returns (T, E)."""
        if self.norm_first:
            x = x + self._sa_block_packed(self.norm1(x), cu_seqlens, max_seqlen)
            return x + self._ff_block(self.norm2(x))
        x = self.norm1(x + self._sa_block_packed(x, cu_seqlens, max_seqlen))
        return self.norm2(x + self._ff_block(x))

    def _forward_nested(self, src, src_mask, is_causal):
        """Pad (batch_first, as the fast path requires), run the fused layer with a key-padding mask, unpad."""
        lengths = [t.shape[0] for t in src.unbind()]
        padded = src.to_padded_tensor(0.0)
        pad = (
            torch.arange(padded.shape[1], device=padded.device)[None]
            >= torch.tensor(lengths, device=padded.device)[:, None]
        )
        out = self.forward(padded, src_mask, pad, is_causal)
        return torch.nested.as_nested_tensor([out[i, :n] for i, n in enumerate(lengths)])

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        x = self.self_attn(
            x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False, is_causal=is_causal
        )[0]
        return self.dropout1(x)

    def _sa_block_packed(self, x, cu_seqlens, max_seqlen):
        return self.dropout1(self.self_attn.forward_packed(x, cu_seqlens, max_seqlen))

    def _ff_block(self, x):
        """linear1 (activation fused, or after it) -> dropout -> linear2 -> dropout2, as torch's layer computes."""
        hidden = self.linear1(x)
        if self._unfused_activation is not None:
            hidden = self._unfused_activation(hidden)
        return self.dropout2(self.linear2(self.dropout(hidden)))
