"""MultiheadAttention and TransformerEncoderLayer drop-ins built on deepfuse's flash attention and FusedLinear.

Both keep torch's parameters and state_dict. The fused path covers the common case; the rest (need_weights,
arbitrary attention masks, float masks, add_bias_kv / add_zero_attn, attention dropout while training) takes
torch's own implementation, as each docstring states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfuse.nn.linear import FusedLinear
from deepfuse.ops.attention import attention
from deepfuse.ops.linear_act import linear_act


def _check_shapes(query, key, value, key_padding_mask) -> bool:
    """Whether the call is batched; torch's shape rules (F.multi_head_attention_forward), as ValueErrors."""
    if query.dim() not in (2, 3):
        raise ValueError(f"query must be unbatched 2-D (L, E) or batched 3-D, got shape {tuple(query.shape)}")
    batched = query.dim() == 3
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise ValueError(f"key and value must be {query.dim()}-D like query, got shapes {tuple(key.shape)} and "
                         f"{tuple(value.shape)}")  # fmt: skip
    if key_padding_mask is not None and key_padding_mask.dim() != (2 if batched else 1):
        raise ValueError(f"key_padding_mask must be {'(N, S)' if batched else '(S,) for an unbatched query'}, "
                         f"got shape {tuple(key_padding_mask.shape)}")  # fmt: skip
    return batched


def _causal_mask(query, key, batch_first: bool) -> torch.Tensor:
    """The (L, S) bool mask of is_causal (True = hidden), for torch's implementation."""
    dim = 0 if query.dim() == 2 or not batch_first else 1
    return torch.ones(query.shape[dim], key.shape[dim], dtype=torch.bool, device=query.device).triu(1)


class MultiheadAttention(nn.MultiheadAttention):
    """Drop-in for ``nn.MultiheadAttention`` (same constructor, parameters and forward signature).

    Fused path (projections through linear_act, attention through the flash kernel) when: need_weights
    is False, attn_mask is None (or is_causal=True: the hint is trusted, as torch's SDPA path does),
    key_padding_mask is None or bool, no bias_k/bias_v/add_zero_attn, and no attention dropout in training;
    kdim/vdim different from embed_dim are fused too. Inputs may be unbatched (L, E) (``batch_first`` is then
    ignored, as in torch). Otherwise — ``need_weights=True`` needs the weights matrix, for one — torch's
    implementation runs. Returns ``(output, None)`` on the fused path.

    One extension: ``is_causal=True`` without ``attn_mask`` (torch raises) means the causal mask on every path.
    A query whose keys are all masked gets zeros on the fused path (torch gives NaN).
    """

    def _fused_path_ok(self, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        return (
            not need_weights
            and (attn_mask is None or is_causal)
            and (key_padding_mask is None or key_padding_mask.dtype == torch.bool)
            and self.bias_k is None
            and not self.add_zero_attn
            and not (self.training and self.dropout > 0.0)
        )

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        if not self._fused_path_ok(key_padding_mask, need_weights, attn_mask, is_causal):
            if is_causal and attn_mask is None:  # torch needs the mask itself
                attn_mask = _causal_mask(query, key, self.batch_first)
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)  # fmt: skip
        batched = _check_shapes(query, key, value, key_padding_mask)
        self_attention = query is key and key is value
        # To (N, L, E): an unbatched (L, E) input is one batch row, whatever batch_first says.
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if key.shape[0] != query.shape[0] or value.shape[:2] != key.shape[:2]:
            raise ValueError(f"query, key and value must share the batch size, and key and value the sequence "
                             f"length; got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)} "
                             "as (N, L, E)")  # fmt: skip
        E, heads = self.embed_dim, self.num_heads
        b = self.in_proj_bias
        b_q, b_k, b_v = (None, None, None) if b is None else (b[:E], b[E : 2 * E], b[2 * E :])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            if self_attention:  # one projection GEMM
                q, k, v = linear_act(query, w, b).chunk(3, dim=-1)
            else:
                q, k, v = linear_act(query, w[:E], b_q), linear_act(key, w[E : 2 * E], b_k), linear_act(
                    value, w[2 * E :], b_v)  # fmt: skip
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
        if not batched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None


def _fused_activation(activation) -> str | None:
    """The linear_act name of nn.TransformerEncoderLayer's ``activation`` (a name or a callable), or None."""
    if isinstance(activation, str):
        return activation if activation in ("relu", "gelu") else None
    # Exact types only: a subclass may override forward.
    if type(activation) is nn.GELU:
        return "gelu_tanh" if activation.approximate == "tanh" else "gelu"
    if type(activation) is nn.LeakyReLU:
        return "leaky_relu" if activation.negative_slope == 0.01 else None
    modules = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
    for module_type, name in modules.items():
        if type(activation) is module_type:
            return name
    functions = {F.relu: "relu", torch.relu: "relu", F.gelu: "gelu", F.silu: "silu", torch.sigmoid: "sigmoid",
                 F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh"}  # fmt: skip
    for function, name in functions.items():
        if activation is function:
            return name
    return None


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """Drop-in for ``nn.TransformerEncoderLayer`` (same constructor and state_dict): self-attention through
    deepfuse.nn.MultiheadAttention and the feed-forward block through FusedLinear, with the activation fused into
    linear1 when it is one linear_act knows ("relu", "gelu", F.relu/F.gelu/F.silu/torch.tanh/torch.sigmoid,
    nn.ReLU/GELU/SiLU/Tanh/Sigmoid/LeakyReLU(0.01) instances); any other callable runs after linear1.
    ``src_mask`` other than a causal mask (is_causal=True) takes torch's attention. Unbatched (S, E) inputs,
    batch_first and norm_first as in torch. torch's inference fast path (nested tensors) is not used."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation="relu", layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None) -> None:  # fmt: skip
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first,
                         bias, device, dtype)  # fmt: skip
        factory = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **factory)  # fmt: skip
        fused_activation = _fused_activation(activation)
        self.linear1 = FusedLinear(d_model, dim_feedforward, bias=bias, activation=fused_activation or "none",
                                   **factory)  # fmt: skip
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
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]  # fmt: skip
        return self.dropout1(x)

    def _ff_block(self, x):
        hidden = self.linear1(x)
        if self._unfused_activation is not None:
            hidden = self._unfused_activation(hidden)
        return self.dropout2(self.linear2(self.dropout(hidden)))
