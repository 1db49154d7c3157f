"""LSTM and LSTMCell drop-ins: nn.LSTM's / nn.LSTMCell's parameters, names, gate order and state_dict.

The backend follows deepfuse's dispatch for the "lstm" op (``use_backend`` / ``DEEPFUSE_BACKEND`` /
automatic). The torch backend is torch's own module (cuDNN on the GPU); triton runs deepfuse's kernels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from deepfuse.backend import choose_backend
from deepfuse.ops.lstm import lstm_cell, lstm_layer


def _reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Each sequence (T, B, ...) reversed over its own first lengths[b] steps; padding stays in place."""
    if lengths is None:
        return x.flip(0)
    T = x.shape[0]
    steps = torch.arange(T, device=x.device)[:, None]
    lengths = lengths.to(x.device)[None, :]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
    return x.gather(0, index[..., None].expand_as(x))


class LSTM(nn.LSTM):
    """Drop-in for ``nn.LSTM``: same constructor, parameters (``weight_ih_l0``, ``..._reverse``) and forward:
    ``forward(input, hx=None) -> (output, (h_n, c_n))`` with batch_first, bidirectional, multiple layers,
    dropout between layers in training, unbatched input and PackedSequence. ``proj_size > 0`` raises
    NotImplementedError.

    Being an ``nn.LSTM`` (``isinstance`` holds, as init code often checks), it shares nn.LSTM's limit in
    ``torch.compile(fullgraph=True)``: set ``torch._dynamo.config.allow_rnn = True`` first. The ops
    (``deepfuse.ops.lstm_layer``, ``lstm_cell``) compile without it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.proj_size > 0:
            raise NotImplementedError("deepfuse.nn.LSTM does not support proj_size > 0; use torch.nn.LSTM")

    def forward(self, input, hx=None):
        data = input.data if isinstance(input, PackedSequence) else input
        if choose_backend("lstm", None, data) == "torch":
            return super().forward(input, hx)
        packed = input if isinstance(input, PackedSequence) else None
        lengths = None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed)  # (T, B, input_size), original batch order
        else:
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            if unbatched and hx is not None:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        directions = 2 if self.bidirectional else 1
        batch = x.shape[1]
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have input_size={self.input_size} features, got {x.shape[-1]}")
        if hx is None:
            zeros = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            hx = (zeros, zeros)
        h0, c0 = hx
        expected = (self.num_layers * directions, batch, self.hidden_size)
        for name, state in (("h_0", h0), ("c_0", c0)):
            if tuple(state.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(state.shape)}")
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self, f"{kind}{suffix}") for kind in ("weight_ih", "weight_hh")]
                biases = (
                    [getattr(self, f"{kind}{suffix}") for kind in ("bias_ih", "bias_hh")] if self.bias else [None] * 2
                )
                index = layer * directions + direction
                seq = _reverse_within_lengths(layer_input, lengths) if direction else layer_input
                out, h, c = lstm_layer(seq, h0[index], c0[index], *weights, *biases, lengths=lengths)
                outputs.append(_reverse_within_lengths(out, lengths) if direction else out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if packed is not None:
            order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(batch)
            order = order.to(layer_input.device)
            repacked = pack_padded_sequence(layer_input[:, order], lengths[order.cpu()], enforce_sorted=True)
            output = PackedSequence(repacked.data, repacked.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            return output, (h_n, c_n)
        if input.dim() == 2:
            return layer_input.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (layer_input.transpose(0, 1) if self.batch_first else layer_input), (h_n, c_n)


class LSTMCell(nn.LSTMCell):
    """Drop-in for ``nn.LSTMCell``: same constructor, parameters and ``forward(input, hx=None) -> (h', c')``,
    one fused kernel per step on the triton backend."""

    def forward(self, input, hx=None):
        if choose_backend("lstm", None, input) == "torch":
            return super().forward(input, hx)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        h, c = (t.unsqueeze(0) for t in hx) if unbatched else hx
        h_next, c_next = lstm_cell(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h_next.squeeze(0), c_next.squeeze(0)) if unbatched else (h_next, c_next)
