"""``deepfuse bench overhead``: µs per call of every op and every deepfuse.nn layer beside the plain torch code it
replaces, forward and forward+backward, at tiny sizes (where the host path is the whole cost) and at the models'
layer shapes.

The two sides of a row get the same inputs and weights (layers: ``bench.baseline``'s plain-torch twin), and are
timed interleaved in the same process: rounds of back-to-back calls, deepfuse then torch, the median per-call time
over the rounds (a round is ~10 ms, after warm-up). On the CPU deepfuse runs its torch backend, so the ratio is
deepfuse's own host path. On a GPU each usable backend gets a row, and each is timed again replaying a CUDA graph
of the same call (``+graph``: the host path removed), beside torch's eager call and torch's graph.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import deepfuse
from deepfuse import nn as dfnn
from deepfuse.bench import records
from deepfuse.bench.baseline import plain_torch_twin

ROUND_S = 0.01
ROUNDS = 15


@dataclass
class Case:
    """One row's two sides: ``deepfuse(*inputs)`` and ``torch(*inputs)`` return a tensor (or a tuple, first used)."""

    name: str
    size: str  # "tiny" or "model"
    shape: str
    deepfuse: Callable
    torch: Callable
    inputs: tuple


def _randn(*shape, device, grad=True):
    return torch.randn(*shape, device=device).requires_grad_(grad)


def _op_cases(size: str, device) -> list[Case]:
    tiny = size == "tiny"
    M, K, N = (8, 32, 32) if tiny else (64, 256, 128)
    x, w, b = _randn(M, K, device=device), _randn(N, K, device=device), _randn(N, device=device)
    B, C, H = (2, 8, 8) if tiny else (8, 32, 32)
    xc, wc, bc = _randn(B, C, H, H, device=device), _randn(C, C, 3, 3, device=device), _randn(C, device=device)
    shape = (2, 2, 16, 16) if tiny else (8, 4, 256, 32)  # the IMDb Transformer's (B, heads, N, head dim)
    q, k, v = (_randn(*shape, device=device) for _ in range(3))
    T, Bl, Hl = (4, 2, 16) if tiny else (64, 16, 128)
    xl, h0, c0 = _randn(T, Bl, Hl, device=device), _randn(Bl, Hl, device=device), _randn(Bl, Hl, device=device)
    w_ih, w_hh = _randn(4 * Hl, Hl, device=device), _randn(4 * Hl, Hl, device=device)
    b_ih, b_hh = _randn(4 * Hl, device=device), _randn(4 * Hl, device=device)
    ops = deepfuse.ops
    return [
        Case(
            "linear_act gelu",
            size,
            f"{M}x{K}->{N}",
            lambda *a: ops.linear_act(*a, "gelu"),
            lambda x, w, b: F.gelu(F.linear(x, w, b)),
            (x, w, b),
        ),
        Case(
            "conv2d_act relu",
            size,
            f"{B}x{C}x{H}x{H} 3x3",
            lambda *a: ops.conv2d_act(*a, padding=1, activation="relu"),
            lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)),
            (xc, wc, bc),
        ),
        Case(
            "attention causal",
            size,
            "x".join(map(str, shape)),
            lambda *a: ops.attention(*a, causal=True),
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            (q, k, v),
        ),
        Case(
            "lstm_cell",
            size,
            f"B{Bl} H{Hl}",
            lambda *a: ops.lstm_cell(*a)[0],
            lambda x, h, c, *w: torch.lstm_cell(x, (h, c), *w)[0],
            (xl[0], h0, c0, w_ih, w_hh, b_ih, b_hh),
        ),
        Case(
            "lstm_layer",
            size,
            f"T{T} B{Bl} H{Hl}",
            lambda *a: ops.lstm_layer(*a)[0],
            lambda x, h, c, *w: torch.lstm(x, (h[None], c[None]), w, True, 1, 0.0, True, False, False)[0],
            (xl, h0, c0, w_ih, w_hh, b_ih, b_hh),
        ),
    ]


def _layer_cases(size: str, device) -> list[Case]:
    tiny = size == "tiny"
    width, batch, tokens, heads = (32, 8, 16, 2) if tiny else (256, 64, 256, 4)
    B, C, H = (2, 8, 8) if tiny else (8, 32, 32)
    T, Bl, Hl = (4, 2, 16) if tiny else (64, 16, 128)
    x = _randn(batch, width, device=device)
    seq = _randn(2 if tiny else 8, tokens, 32 if tiny else 128, device=device)
    image = _randn(B, C, H, H, device=device)
    sequence = _randn(Bl, T, Hl, device=device)
    layers = [
        (
            "FusedLinear gelu",
            f"{batch}x{width}->{width // 2}",
            dfnn.FusedLinear(width, width // 2, activation="gelu"),
            (x,),
            "train",
        ),
        (
            "ConvBNAct relu",
            f"{B}x{C}x{H}x{H} 3x3",
            dfnn.ConvBNAct(C, C, 3, padding=1, activation="relu"),
            (image,),
            "train",
        ),
        (
            "ConvBNAct relu",
            f"{B}x{C}x{H}x{H} 3x3",
            dfnn.ConvBNAct(C, C, 3, padding=1, activation="relu"),
            (image,),
            "eval",
        ),
        ("ResidualBlock", f"{B}x{C}x{H}x{H}", dfnn.ResidualBlock(C, C), (image,), "eval"),
        ("MultiheadAttention", f"{tuple(seq.shape)} heads {heads}", _MHA(seq.shape[-1], heads), (seq,), "train"),
        (
            "TransformerEncoderLayer",
            f"{tuple(seq.shape)} heads {heads}",
            dfnn.TransformerEncoderLayer(seq.shape[-1], heads, 2 * seq.shape[-1], dropout=0.0, batch_first=True),
            (seq,),
            "train",
        ),
        (
            "LSTM bidirectional",
            f"B{Bl} T{T} H{Hl}",
            _FirstOutput(dfnn.LSTM(Hl, Hl, batch_first=True, bidirectional=True)),
            (sequence,),
            "train",
        ),
        ("LSTMCell", f"B{Bl} H{Hl}", _FirstOutput(dfnn.LSTMCell(Hl, Hl)), (sequence[:, 0],), "train"),
    ]
    cases = []
    for name, shape, layer, inputs, mode in layers:
        layer = layer.to(device).train(mode == "train")
        twin = plain_torch_twin(layer, inputs).train(mode == "train")
        cases.append(Case(f"{name} ({mode})", size, shape, layer, twin, inputs))
    return cases


class _MHA(nn.Module):
    """Self-attention with need_weights=False (what a Transformer block asks for)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = dfnn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class _FirstOutput(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)[0]


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _call(fn: Callable, inputs: tuple, mode: str) -> Callable[[], object]:
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return fn(*inputs)

        return forward

    def forward_backward():
        _first(fn(*inputs)).sum().backward()

    return forward_backward


def _as_graph(call: Callable[[], object], device) -> Callable[[], object]:
    """``call`` captured once in a CUDA graph (after warm-up on a side stream), replayed by the returned function."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay


def _per_call_us(calls: dict[str, Callable[[], object]], device) -> dict[str, tuple[float, float, float]]:
    """(median, p20, p80) µs per call of each function, timed in interleaved rounds of back-to-back calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counts = {}
    for name, call in calls.items():  # warm-up, and calls per round from one timed call
        for _ in range(3):
            call()
        sync()
        start = time.perf_counter()
        call()
        sync()
        counts[name] = max(1, int(ROUND_S / max(time.perf_counter() - start, 1e-7)))
    samples = {name: [] for name in calls}
    for _ in range(ROUNDS):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                call()
            sync()
            samples[name].append((time.perf_counter() - start) / counts[name] * 1e6)
    deciles = {name: statistics.quantiles(values, n=10) for name, values in samples.items()}
    return {name: (statistics.median(values), deciles[name][1], deciles[name][7]) for name, values in samples.items()}


def _backends(device) -> list[str]:
    if device.type != "cuda":
        return ["torch"]
    return [name for name, (usable, _) in deepfuse.available_backends().items() if usable]


def run(sizes=("tiny", "model"), modes=("fwd", "fwdbwd"), device=None) -> list[dict]:
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        for case in _op_cases(size, device) + _layer_cases(size, device):
            for mode in modes:
                calls = {"torch": _call(case.torch, case.inputs, mode)}
                for backend in _backends(device):
                    calls[f"deepfuse_{backend}"] = _with_backend(backend, _call(case.deepfuse, case.inputs, mode))
                if device.type == "cuda":
                    calls |= {f"{name}+graph": _as_graph(call, device) for name, call in list(calls.items())}
                for provider, (median, p20, p80) in _per_call_us(calls, device).items():
                    rows.append(
                        {
                            "op": f"overhead:{case.name}",
                            "shape": f"{case.size} {case.shape}",
                            "mode": mode,
                            "provider": provider,
                            "dtype": "float32",
                            "median_ms": median / 1000,
                            "p20_ms": p20 / 1000,
                            "p80_ms": p80 / 1000,
                        }
                    )
    return rows


def _with_backend(backend: str, call: Callable[[], object]) -> Callable[[], object]:
    def run_on_backend():
        with deepfuse.use_backend(backend):
            return call()

    return run_on_backend


def table(rows: list[dict]) -> str:
    """Markdown: one line per (op, shape, mode), µs per call of each provider and its ratio to torch's."""
    keyed: dict[tuple, dict[str, float]] = {}
    for row in rows:
        keyed.setdefault((row["op"].removeprefix("overhead:"), row["shape"], row["mode"]), {})[row["provider"]] = (
            row["median_ms"] * 1000
        )
    providers = sorted({p for times in keyed.values() for p in times if p != "torch"})
    lines = [
        "| call | size | mode | torch µs | " + " | ".join(f"{p} µs (ratio)" for p in providers) + " |",
        "|---|---|---|---|" + "---|" * len(providers),
    ]
    for (name, shape, mode), times in keyed.items():
        cells = [f"{times[p]:.1f} ({times[p] / times['torch']:.2f}×)" if p in times else "" for p in providers]
        lines.append(f"| {name} | {shape} | {mode} | {times['torch']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(quick=False, dtype=torch.float32, modes=("fwd", "fwdbwd"), out_dir="benchmarks/results") -> list[dict]:
    """The overhead table; fp32 throughout (the host path does not depend on the dtype)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda":
        print("No GPU: deepfuse's torch backend against the plain torch code on the CPU (the host path's cost).")
    rows = run(sizes=("tiny",) if quick else ("tiny", "model"), modes=modes, device=device)
    markdown = table(rows)
    print(markdown)
    env = records.environment()
    folder = Path(out_dir) / records.gpu_folder(env)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{env['timestamp'][:10]}-{env['git_sha']}-overhead.json"
    path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    header = f"# Host overhead — {env.get('gpu') or 'CPU'}\n\n```\n{json.dumps(env, indent=1)}\n```\n\n"
    path.with_suffix(".md").write_text(header + markdown + "\n")
    print(f"results: {path}")
    return rows
