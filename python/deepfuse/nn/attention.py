"""MultiheadAttention and TransformerEncoderLayer drop-ins built on deepfuse's flash attention and FusedLinear.

Both keep torch's parameters and state_dict. The fused path covers the common case; the rest (need_weights,
arbitrary attention masks, float masks, add_bias_kv / add_zero_attn, separate k/v dims, attention dropout
while training) takes torch's own implementation, as each docstring states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfuse.nn.linear import FusedLinear
from deepfuse.ops.attention import attention
from deepfuse.ops.linear_act import linear_act


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in for ``nn.MultiheadAttention`` (same constructor, parameters and forward signature).

    Fused path (projections through linear_act, attention through the flash kernel) when: need_weights
    is False, attn_mask is None (or is_causal=True with a causal attn_mask), key_padding_mask is None or
    bool, no bias_k/bias_v/add_zero_attn, equal q/k/v embedding dims, and no attention dropout in training.
    Otherwise — ``need_weights=True`` needs the weights matrix, for one — torch's implementation runs.
    Returns ``(output, None)`` on the fused path.
    """

    def _fused_path_ok(self, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        return (
            not need_weights
            and (attn_mask is None or is_causal)
            and (key_padding_mask is None or key_padding_mask.dtype == torch.bool)
            and self.bias_k is None
            and not self.add_zero_attn
            and self._qkv_same_embed_dim
            and not (self.training and self.dropout > 0.0)
        )

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        if not self._fused_path_ok(key_padding_mask, need_weights, attn_mask, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)  # fmt: skip
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        E, heads = self.embed_dim, self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key and key is value:  # self-attention: one projection GEMM
            q, k, v = linear_act(query, w, b).chunk(3, dim=-1)
        else:
            q = linear_act(query, w[:E], b[:E] if b is not None else None)
            k = linear_act(key, w[E : 2 * E], b[E : 2 * E] if b is not None else None)
            v = linear_act(value, w[2 * E :], b[2 * E :] if b is not None else None)
        batch, n_q, n_k = query.shape[0], query.shape[1], key.shape[1]
        q = q.reshape(batch, n_q, heads, E // heads).transpose(1, 2)
        k = k.reshape(batch, n_k, heads, E // heads).transpose(1, 2)
        v = v.reshape(batch, n_k, heads, E // heads).transpose(1, 2)
        out = attention(q, k, v, causal=is_causal, key_padding_mask=key_padding_mask)
        out = linear_act(out.transpose(1, 2).reshape(batch, n_q, E), self.out_proj.weight, self.out_proj.bias)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return (out.squeeze(1) if unbatched else out), None


_ACTIVATION_NAMES = {F.relu: "relu", F.gelu: "gelu", "relu": "relu", "gelu": "gelu"}


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """Drop-in for ``nn.TransformerEncoderLayer`` (same constructor and state_dict): self-attention through
    deepfuse.nn.MultiheadAttention and the feed-forward block through FusedLinear with the activation
    fused into linear1. ``src_mask`` other than a causal mask (is_causal=True) takes torch's attention."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first,
                         bias, device, dtype)  # fmt: skip
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **factory)  # fmt: skip
        fused_activation = _ACTIVATION_NAMES.get(activation, "none")
        self.linear1 = FusedLinear(d_model, dim_feedforward, bias=bias, activation=fused_activation, **factory)
        self.linear2 = FusedLinear(dim_feedforward, d_model, bias=bias, **factory)
        # An activation deepfuse cannot fuse (a custom callable) still runs, after linear1.
        self._unfused_activation = None if fused_activation != "none" else self.activation

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]  # fmt: skip
        return self.dropout1(x)

    def _ff_block(self, x):
        hidden = self.linear1(x)
        if self._unfused_activation is not None:
            hidden = self._unfused_activation(hidden)
        return self.dropout2(self.linear2(self.dropout(hidden)))
