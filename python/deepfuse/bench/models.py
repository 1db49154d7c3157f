"""Model benchmarks: train-step and inference throughput of each registered model on its example batch.

Providers: the baseline — the same network built from plain torch modules with the same weights
(``bench.baseline.plain_torch_twin``: nn.Linear + activation, nn.Conv2d + nn.BatchNorm2d, nn.LSTM,
nn.MultiheadAttention...) — eager (``torch``) and under torch.compile (``torch_compile``, on the GPU); then deepfuse's
model on each of its backends (``deepfuse_torch``, ``triton``, ``cuda``); each in fp32 and, on the GPU, under bf16
autocast. Mode ``fwd`` is inference (eval mode, no autograd); ``fwdbwd`` is a training step's forward
and backward (train mode). Forward FLOPs come from deepfuse's op labels plus torch's FlopCounterMode for the
rest. Rows use the op benchmarks' format, plus ``samples_per_s``.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

import deepfuse
from deepfuse import models
from deepfuse.bench import records, runner
from deepfuse.bench.baseline import plain_torch_twin
from deepfuse.profile.labels import parse_label

GPU_BATCH, CPU_BATCH = 64, 2


def _count_flops(model, inputs) -> int:
    """Forward FLOPs: deepfuse's kernel ops from their profiler labels, every aten op (the torch backend's
    included) from FlopCounterMode (which sees a deepfuse custom op as one opaque call)."""
    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, counter:
        model(*inputs)
    # The torch backend's labels wrap aten ops the counter already saw: only kernel backends' labels add FLOPs.
    labelled = sum(
        label["flops"] for event in prof.events() if (label := parse_label(event.name)) and label["backend"] != "torch"
    )
    return int(counter.get_total_flops()) + labelled


def _provider(model, task, backend: str, amp: torch.dtype | None, device: torch.device):
    """provider(*inputs, targets): inference outputs under no_grad, else the training loss (scalar)."""

    def run(*args):
        inputs, targets = args[:-1], args[-1]
        autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
        with deepfuse.use_backend(backend), autocast:
            if not torch.is_grad_enabled():
                model.eval()
                return model(*inputs)
            model.train()
            return task.loss(model(*inputs), targets).float()

    return run


def model_case(name: str, device: torch.device, quick: bool):
    task = models.get(name)
    config = {}
    batch = GPU_BATCH if device.type == "cuda" else CPU_BATCH
    state, inputs, targets = task.example(batch, config)
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    torch.manual_seed(0)
    model = task.build(config, state).to(device)
    inputs = tuple(t.to(device) for t in inputs)
    targets = targets.to(device)
    flops = _count_flops(copy.deepcopy(model), inputs)
    case = runner.Case(f"model:{name}", f"batch {batch}", (*inputs, targets), torch.ones((), device=device), flops, 0)
    return task, model, case, batch


def providers_for(task, model, device: torch.device, example_inputs: tuple, cuda_graphs: bool = False) -> dict:
    """The baseline twin (eager, compiled), then deepfuse's backends; with ``cuda_graphs`` each also replayed as CUDA
    graphs (torch.compile's reduce-overhead mode: ``<provider>+graphs``)."""
    found = {}
    amps = {"fp32": None, "bf16": torch.bfloat16} if device.type == "cuda" else {"fp32": None}
    twin = plain_torch_twin(model, example_inputs)
    for amp_name, amp in amps.items():
        found[f"torch_{amp_name}"] = _provider(twin, task, "torch", amp, device)
        if device.type == "cuda":
            found[f"torch_compile_{amp_name}"] = torch.compile(
                _provider(copy.deepcopy(twin), task, "torch", amp, device)
            )
        found[f"deepfuse_torch_{amp_name}"] = _provider(model, task, "torch", amp, device)
        if device.type == "cuda":
            for backend in ("triton", "cuda"):
                usable, reason = deepfuse.available_backends()[backend]
                if usable:
                    found[f"{backend}_{amp_name}"] = _provider(model, task, backend, amp, device)
                elif amp_name == "fp32":
                    print(f"skipped provider {backend}: {reason}")
    if cuda_graphs:
        for name in [name for name in found if "compile" not in name]:
            # A fresh copy per provider: CUDA graph trees keep their own static buffers per compiled function.
            owner = twin if name.startswith("torch_") else model
            backend = "torch" if name.startswith(("torch_", "deepfuse_torch_")) else name.rsplit("_", 1)[0]
            amp = torch.bfloat16 if name.endswith("bf16") else None
            found[f"{name}+graphs"] = torch.compile(
                _provider(copy.deepcopy(owner), task, backend, amp, device), mode="reduce-overhead"
            )
    return found


def check_cuda_graphs(task, device: torch.device) -> None:
    """--cuda-graphs needs a GPU and a model whose steps never wait for it; raises ValueError saying why not."""
    if task.cuda_graphs_blocker:
        raise ValueError(f"--cuda-graphs: {task.name} cannot be captured: {task.cuda_graphs_blocker}")
    if device.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device (a CUDA graph replays GPU work)")


def main(
    names, quick: bool = True, modes=("fwd", "fwdbwd"), out_dir="benchmarks/results", cuda_graphs: bool = False
) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cuda_graphs:
        for name in names:
            check_cuda_graphs(models.get(name), device)
    if device.type != "cuda":
        print("No GPU: a CPU smoke run of the torch provider on a batch of 2. CPU numbers are not GPU performance.")
    rows = []
    for name in names:
        task, model, case, batch = model_case(name, device, quick)
        providers = providers_for(task, model, device, case.inputs[:-1], cuda_graphs)
        for row in runner.run([case], providers, modes, device):
            row["samples_per_s"] = batch / (row["median_ms"] / 1000)
            rows.append(row)
    path = records.write_results(rows, records.environment(), out_dir, "models" if len(names) > 1 else names[0])
    print(f"results: {path}")
    return rows
