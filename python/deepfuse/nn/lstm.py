"""LSTM and LSTMCell drop-ins: nn.LSTM's / nn.LSTMCell's parameters, names, gate order and state_dict.

The backend follows deepfuse's dispatch for the "lstm" op (``use_backend`` / ``DEEPFUSE_BACKEND`` /
automatic). The torch backend is torch's own module (cuDNN on the GPU); triton and cuda run deepfuse's kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from deepfuse.backend import choose_backend
from deepfuse.ops.linear_act import linear_act
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


def _check_state_pair(hx, name: str = "hx") -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, torch.Tensor) for t in hx):
        raise TypeError(f"{name} must be a tuple of two tensors (h, c), got {type(hx).__name__}")
    return hx[0], hx[1]


def lstm_projected_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths=None, backend=None):
    """One layer, one direction of an LSTM with a projection (nn.LSTM's ``proj_size``), one step at a time:
    the fused cell (``deepfuse.ops.lstm_cell``), then ``h = h_full @ w_hr^T`` (``deepfuse.ops.linear_act``).

    x: (T, B, input_size); h0: (B, proj_size); c0: (B, hidden_size); w_hh: (4 * hidden_size, proj_size);
    w_hr: (proj_size, hidden_size); lengths: None or (B,) (rows past their length output zeros and keep their
    state). Returns (output (T, B, proj_size), h_n (B, proj_size), c_n (B, hidden_size)).
    """
    hidden, proj = w_hh.shape[0] // 4, w_hh.shape[1]
    # lstm_cell takes h and c of one width (w_hh square per gate): h is zero-padded from proj_size to hidden_size
    # and w_hh gets zero columns, so h_pad @ w_hh_pad^T == h @ w_hh^T exactly (nn.LSTM requires proj < hidden).
    w_hh_padded = F.pad(w_hh, (0, hidden - proj))
    h, c = h0, c0
    valid_rows = None if lengths is None else lengths.to(x.device)
    outputs = []
    for t in range(x.shape[0]):
        h_full, c_next = lstm_cell(
            x[t], F.pad(h, (0, hidden - proj)), c, w_ih, w_hh_padded, b_ih, b_hh, backend=backend
        )
        h_next = linear_act(h_full, w_hr, backend=backend)
        if valid_rows is not None:
            valid = (t < valid_rows)[:, None]
            outputs.append(torch.where(valid, h_next, 0.0))
            h, c = torch.where(valid, h_next, h), torch.where(valid, c_next, c)
        else:
            outputs.append(h_next)
            h, c = h_next, c_next
    output = torch.stack(outputs) if outputs else x.new_empty((0, x.shape[1], proj))
    return output, h, c


class LSTM(nn.LSTM):
    """Drop-in for ``nn.LSTM``: same constructor, parameters (``weight_ih_l0``, ``weight_hr_l0``, ``..._reverse``)
    and forward: ``forward(input, hx=None) -> (output, (h_n, c_n))`` with batch_first, bidirectional, multiple
    layers, dropout between layers in training, ``proj_size``, unbatched input and PackedSequence.

    Where it runs: on the torch backend, torch's own nn.LSTM (cuDNN on the GPU). On triton / cuda, without
    ``proj_size`` each layer and direction is one ``deepfuse.ops.lstm_layer`` (one input GEMM, then the persistent
    or per-step recurrence kernels); with ``proj_size > 0`` each step is the fused cell kernel
    (``deepfuse.ops.lstm_cell``) followed by the projection ``h = W_hr h`` (``deepfuse.ops.linear_act``) — a
    Python loop over the steps, two launches per step, with the recurrent product done at hidden_size width
    (h zero-padded) since lstm_cell takes h and c of one width.

    Being an ``nn.LSTM`` (``isinstance`` holds, as init code often checks), it shares nn.LSTM's limit in
    ``torch.compile(fullgraph=True)``: set ``torch._dynamo.config.allow_rnn = True`` first. The ops
    (``deepfuse.ops.lstm_layer``, ``lstm_cell``) compile without it."""

    def forward(self, input, hx=None):
        data = input.data if isinstance(input, PackedSequence) else input
        backend = choose_backend("lstm", None, data)
        if backend == "torch":
            return super().forward(input, hx)
        packed = input if isinstance(input, PackedSequence) else None
        lengths = None
        unbatched = False
        if packed is not None:
            x, lengths = pad_packed_sequence(packed)  # (T, B, input_size), original batch order
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D input instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if hx is not None:
            hx = _check_state_pair(hx)
            if unbatched:
                if hx[0].dim() != 2 or hx[1].dim() != 2:
                    raise ValueError(
                        f"hx: for unbatched 2-D input, h_0 and c_0 must be 2-D, got shapes "
                        f"{tuple(hx[0].shape)} and {tuple(hx[1].shape)}"
                    )
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        directions = 2 if self.bidirectional else 1
        batch = x.shape[1]
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have input_size={self.input_size} features, got {x.shape[-1]}")
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = x.new_zeros(self.num_layers * directions, batch, out_size)
            c0 = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)
        else:
            h0, c0 = hx
        for name, state, size in (("h_0", h0, out_size), ("c_0", c0, self.hidden_size)):
            expected = (self.num_layers * directions, batch, size)
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
                if self.proj_size > 0:
                    out, h, c = lstm_projected_layer(
                        seq,
                        h0[index],
                        c0[index],
                        *weights,
                        *biases,
                        getattr(self, f"weight_hr{suffix}"),
                        lengths=lengths,
                        backend=backend,
                    )
                else:
                    out, h, c = lstm_layer(
                        seq, h0[index], c0[index], *weights, *biases, lengths=lengths, backend=backend
                    )
                outputs.append(_reverse_within_lengths(out, lengths) if direction else out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n, c_n = torch.stack(h_n), torch.stack(c_n)
        if packed is not None:
            order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(batch)
            order = order.to(layer_input.device)
            repacked = pack_padded_sequence(layer_input[:, order], lengths[order.cpu()], enforce_sorted=True)
            output = PackedSequence(repacked.data, repacked.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            return output, (h_n, c_n)
        if unbatched:
            return layer_input.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        return (layer_input.transpose(0, 1) if self.batch_first else layer_input), (h_n, c_n)


class LSTMCell(nn.LSTMCell):
    """Drop-in for ``nn.LSTMCell``: same constructor, parameters and ``forward(input, hx=None) -> (h', c')``
    (input (batch, input_size) or unbatched (input_size,); hx omitted means zeros). The torch backend is torch's
    own module; triton / cuda run one fused kernel per step (``deepfuse.ops.lstm_cell``)."""

    def forward(self, input, hx=None):
        backend = choose_backend("lstm", None, input)
        if backend == "torch":
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        if hx is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            h, c = zeros, zeros
        else:
            h, c = _check_state_pair(hx)
            if h.dim() != input.dim() or c.dim() != input.dim():
                raise ValueError(
                    f"hx: h and c must be {input.dim()}-D like input {tuple(input.shape)}, got shapes "
                    f"{tuple(h.shape)} and {tuple(c.shape)}"
                )
            if unbatched:
                h, c = h.unsqueeze(0), c.unsqueeze(0)
        if x.shape[1] != self.input_size:
            raise ValueError(f"input must have input_size={self.input_size} features, got {x.shape[1]}")
        h_next, c_next = lstm_cell(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, backend=backend)
        return (h_next.squeeze(0), c_next.squeeze(0)) if unbatched else (h_next, c_next)
