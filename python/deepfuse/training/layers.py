"""Which backend ran each deepfuse layer of a model: recorded forward passes in the modes a run uses (train, where
dropout is on and BatchNorm uses batch statistics, and eval), attributed per module, fallbacks with their reasons."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepfuse.backend import record_choices

# One entry of a layer: (op, backend, the fallback's reason or "").
Entry = tuple[str, str, str]


def _deepfuse_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or "(model)", m) for name, m in model.named_modules() if type(m).__module__.startswith("deepfuse.nn")]


def _claimed_entries(layers: list[tuple[str, nn.Module]], forward: Callable[[], object]) -> dict[str, list[Entry]]:
    """Run ``forward()`` once; each recorded dispatch goes to the innermost deepfuse layer that made it."""
    claimed: dict[str, list[Entry]] = {name: [] for name, _ in layers}
    starts: dict[str, int] = {}
    handles = []
    with record_choices() as log:
        taken: list[bool] = []

        def before(name):
            def hook(module, args):
                starts[name] = len(log)

            return hook

        def after(name):
            def hook(module, args, output):
                taken.extend([False] * (len(log) - len(taken)))
                for index in range(starts.pop(name, len(log)), len(log)):
                    if not taken[index]:
                        taken[index] = True
                        claimed[name].append((*log[index], log.reasons.get(index, "")))

            return hook

        for name, module in layers:
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
        try:
            forward()
        finally:
            for handle in handles:
                handle.remove()
    return claimed


def _train_mode_entries(model, layers, forward) -> dict[str, list[Entry]]:
    """As _claimed_entries in train mode, leaving no trace: buffers (BatchNorm's running statistics) and the random
    number generators are as before."""
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        model.train()
        try:
            return _claimed_entries(layers, forward)
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


def _describe(entry: Entry, mode: str) -> str:
    op, backend, reason = entry
    return f"{op}: {backend}" + (f" {mode}" if mode else "") + (f" ({reason})" if reason else "")


def layer_backends(model: nn.Module, forward: Callable[[], object]) -> list[tuple[str, str, str]]:
    """Run ``forward()`` in train mode and in eval mode; ``(layer name, layer type, "op: backend, ...")`` per deepfuse
    layer. An entry seen in one mode only says which ("in training" / "in eval"); a fallback gives its reason.

    An op is attributed to the innermost deepfuse layer that dispatched it. Every module's training flag is restored
    afterwards, and the train-mode pass changes no buffer and consumes no random numbers.
    """
    layers = _deepfuse_layers(model)
    flags = [(module, module.training) for module in model.modules()]
    try:
        training = _train_mode_entries(model, layers, forward)
        model.eval()
        evaluation = _claimed_entries(layers, forward)
    finally:
        for module, flag in flags:
            module.training = flag
    rows = []
    for name, module in layers:
        in_training, in_eval = set(training[name]), set(evaluation[name])
        described = [_describe(e, "") for e in in_training & in_eval]
        described += [_describe(e, "in training") for e in in_training - in_eval]
        described += [_describe(e, "in eval") for e in in_eval - in_training]
        if described:
            rows.append((name, type(module).__name__, ", ".join(sorted(described))))
    return rows


def format_layer_backends(rows: list[tuple[str, str, str]]) -> str:
    width = max((len(r[0]) for r in rows), default=5)
    kind = max((len(r[1]) for r in rows), default=4)
    return "\n".join(f"  {name:<{width}}  {layer:<{kind}}  {ops}" for name, layer, ops in rows)
