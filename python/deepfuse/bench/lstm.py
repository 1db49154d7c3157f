"""LSTM benchmark: nn.LSTM (cuDNN), torch.compile, an eager LSTMCell loop and deepfuse's LSTM kernels,
inference forward and forward+backward, at the stock-price, sentiment and large hidden sizes.

FLOPs: 2·T·B·4H·(I + H) per layer forward (the gate GEMMs; the pointwise math not counted).
"""

from __future__ import annotations

import torch
from torch import nn

import deepfuse
from deepfuse.bench import runner

# (T, B, input_size, H): stock model (1 feature, H 64-128, 60 steps), sentiment (embeddings 256),
# and H = 1024.
SHAPES = [(60, 64, 1, 64), (60, 512, 1, 128), (256, 64, 256, 256), (512, 64, 256, 256), (64, 64, 1024, 1024)]
QUICK = [(60, 64, 1, 64), (256, 64, 256, 256)]
CPU = [(8, 4, 3, 16)]
ACTIVATION = None  # no activation argument: the profile command passes nothing for the LSTM


def cases(device: torch.device, dtype: torch.dtype, quick: bool) -> list[runner.Case]:
    shapes = CPU if device.type != "cuda" else QUICK if quick else SHAPES
    result = []
    for T, B, I, H in shapes:  # noqa: E741
        torch.manual_seed(T + B + H)
        reference = nn.LSTM(I, H, num_layers=2).to(device=device, dtype=dtype)
        ours = deepfuse.nn.LSTM(I, H, num_layers=2).to(device=device, dtype=dtype)
        ours.load_state_dict(reference.state_dict())
        cells = _stacked_cells(reference)
        x = torch.randn(T, B, I, device=device, dtype=dtype).requires_grad_()
        dy = torch.randn(T, B, H, device=device, dtype=dtype)
        flops = 2 * T * B * 4 * H * ((I + H) + (H + H))  # two layers
        min_bytes = x.element_size() * (x.numel() + dy.numel() + sum(p.numel() for p in reference.parameters()))
        result.append(runner.Case("lstm", f"T{T}B{B}I{I}H{H}x2", (x, reference, ours, cells), dy, flops, min_bytes))
    return result


def _stacked_cells(lstm: nn.LSTM) -> nn.ModuleList:
    """One nn.LSTMCell per layer with the LSTM's weights: the same work, one step at a time."""
    cells = nn.ModuleList()
    for layer in range(lstm.num_layers):
        cell = nn.LSTMCell(lstm.input_size if layer == 0 else lstm.hidden_size, lstm.hidden_size)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).data = getattr(lstm, f"{name}_l{layer}").data
        cells.append(cell)
    return cells.to(device=lstm.weight_hh_l0.device, dtype=lstm.weight_hh_l0.dtype)


def _cudnn(x, reference, ours, cells):
    return reference(x)[0]


def _cell_loop(x, reference, ours, cells):
    layer_input = x
    for cell in cells:
        h = c = x.new_zeros(x.shape[1], cell.hidden_size)
        outputs = []
        for step in layer_input:
            h, c = cell(step, (h, c))
            outputs.append(h)
        layer_input = torch.stack(outputs)
    return layer_input


def _deepfuse(backend):
    def run(x, reference, ours, cells):
        with deepfuse.use_backend(backend):
            return ours(x)[0]

    return run


def providers(device: torch.device) -> dict:
    found = {"torch": _cudnn, "eager_lstmcell_loop": _cell_loop}
    if device.type == "cuda":
        found["torch_compile"] = torch.compile(_cudnn)
        found |= {name: _deepfuse(name) for name in ("triton", "cuda") if deepfuse.available_backends()[name][0]}
    return found


def main(quick=False, dtype=torch.bfloat16, modes=("fwd", "fwdbwd"), out_dir="benchmarks/results") -> list[dict]:
    return runner.main("lstm", cases, providers, quick=quick, dtype=dtype, modes=modes, out_dir=out_dir)
