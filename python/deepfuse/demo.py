"""The demo: train a small classifier built from FusedLinear layers and check it against the same network in torch.

It runs on the GPU with the automatic backend when one is present, else on the CPU (torch backend; the
Triton kernels through the interpreter with ``--backend triton`` and TRITON_INTERPRET=1).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

import deepfuse
from deepfuse.nn import FusedLinear


def make_spirals(n_per_class: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 2-D spirals: a small task a linear model cannot solve, an MLP can."""
    t = torch.rand(classes, n_per_class, generator=generator) * 3.0 + 0.3
    angle = t * 2.2 + torch.arange(classes)[:, None] * (2 * torch.pi / classes)
    noise = torch.randn(classes, n_per_class, 2, generator=generator) * 0.08
    points = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], dim=-1) + noise
    labels = torch.arange(classes)[:, None].expand(classes, n_per_class)
    return points.reshape(-1, 2), labels.reshape(-1)


def build_model(hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(
        FusedLinear(2, hidden, activation="gelu"),
        FusedLinear(hidden, hidden, activation="gelu"),
        FusedLinear(hidden, classes),
    )


def as_torch_model(model: nn.Sequential) -> nn.Sequential:
    """The same network with plain nn.Linear + activation modules, same weights."""
    layers = []
    for layer in model:
        linear = nn.Linear(layer.in_features, layer.out_features, device=layer.weight.device, dtype=layer.weight.dtype)
        linear.load_state_dict(layer.state_dict())
        layers.append(linear)
        if layer.activation == "gelu":
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def train(model, points, labels, steps: int, lr: float) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(points), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def run(steps: int = 300, hidden: int = 64, backend: str | None = None, seed: int = 0) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(seed)
    points, labels = make_spirals(256, 3, generator)
    points, labels = points.to(device), labels.to(device)
    torch.manual_seed(seed)
    model = build_model(hidden, 3).to(device)
    reference = as_torch_model(copy.deepcopy(model))

    print(f"deepfuse {deepfuse.__version__} on {device}")
    for name, (ok, reason) in deepfuse.available_backends().items():
        print(f"  backend {name:<7} {'available' if ok else 'unavailable'}{': ' + reason if reason else ''}")
    print(deepfuse.explain("linear_act", points, model[0].weight, model[0].bias, "gelu", backend=backend))

    with deepfuse.use_backend(backend):
        start = time.perf_counter()
        losses = train(model, points, labels, steps, lr=0.01)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            accuracy = (model(points).argmax(-1) == labels).float().mean().item()
    reference_losses = train(reference, points, labels, steps, lr=0.01)
    gap = max(abs(a - b) for a, b in zip(losses, reference_losses, strict=True))
    print(
        f"trained {steps} steps in {seconds:.2f} s: loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {accuracy:.1%}"
    )
    print(f"same network in plain torch: loss {reference_losses[-1]:.3f}; largest loss gap over training {gap:.2e}")
    return {"losses": losses, "reference_losses": reference_losses, "accuracy": accuracy, "max_loss_gap": gap}
