"""Which backend ran each deepfuse layer of a model: one recorded forward pass, attributed per module."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from deepfuse.backend import record_choices


def _deepfuse_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name or "(model)", m) for name, m in model.named_modules() if type(m).__module__.startswith("deepfuse.nn")]


def layer_backends(model: nn.Module, forward: Callable[[], object]) -> list[tuple[str, str, str]]:
    """Run ``forward()`` once and return ``(layer name, layer type, "op: backend, ...")`` per deepfuse layer.

    An op is attributed to the innermost deepfuse layer that dispatched it.
    """
    layers = _deepfuse_layers(model)
    claimed: dict[str, list[tuple[str, str]]] = {name: [] for name, _ in layers}
    starts: dict[str, int] = {}
    handles = []
    with record_choices() as log:
        taken = [False] * 0

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
                        claimed[name].append(log[index])

            return hook

        for name, module in layers:
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
        try:
            forward()
        finally:
            for handle in handles:
                handle.remove()
    rows = []
    for name, module in layers:
        ops = sorted(set(claimed[name]))
        if ops:
            rows.append((name, type(module).__name__, ", ".join(f"{op}: {backend}" for op, backend in ops)))
    return rows


def format_layer_backends(rows: list[tuple[str, str, str]]) -> str:
    width = max((len(r[0]) for r in rows), default=5)
    kind = max((len(r[1]) for r in rows), default=4)
    return "\n".join(f"  {name:<{width}}  {layer:<{kind}}  {ops}" for name, layer, ops in rows)
