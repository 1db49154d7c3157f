"""Checks every model's tests share: a few training steps lower the loss; each kernel backend agrees with the
torch backend (and both with float64) on the forward pass and every parameter gradient; a CLI error is one line."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

import deepfuse
from tests.tolerances import assert_close_to_reference


def _as_tuple(inputs):
    return inputs if isinstance(inputs, tuple | list) else (inputs,)


def _double(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    if isinstance(value, tuple | list):
        return type(value)(_double(v) for v in value)
    return value


def _no_dropout(model: nn.Module) -> nn.Module:
    """Dropout masks differ between dtypes; the comparison is about the kernels, so switch dropout off."""
    for module in model.modules():
        if isinstance(module, nn.Dropout | nn.Dropout1d | nn.Dropout2d):
            module.p = 0.0
        if isinstance(module, nn.RNNBase | nn.MultiheadAttention):
            module.dropout = 0.0
    return model


def forward_and_grads(model: nn.Module, task, inputs, targets, backend: str, train: bool):
    model.train(train)
    model.zero_grad(set_to_none=True)
    with deepfuse.use_backend(backend):
        outputs = model(*_as_tuple(inputs))
        task.loss(outputs, targets).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs.detach(), grads


def assert_backend_agrees(
    task, state: dict, config: dict, inputs, targets, backend: str = "triton", train: bool = True
) -> None:
    """``backend`` vs the torch backend vs float64, same weights and batch: outputs and parameter gradients."""
    torch.manual_seed(0)
    model = _no_dropout(task.build(config, state))
    ours = forward_and_grads(copy.deepcopy(model), task, inputs, targets, backend, train)
    theirs = forward_and_grads(copy.deepcopy(model), task, inputs, targets, "torch", train)
    exact = forward_and_grads(copy.deepcopy(model).double(), task, _double(inputs), targets, "torch", train)
    assert_close_to_reference("outputs", ours[0], exact[0], theirs[0], torch.float32)
    assert set(ours[1]) == set(exact[1]), "the backends disagree on which parameters get gradients"
    for name in exact[1]:
        assert_close_to_reference(f"d{name}", ours[1][name], exact[1][name], theirs[1][name], torch.float32)


def finished_run(code: int, out: Path, *pictures: str) -> dict:
    """The metrics.json of a ``deepfuse train`` that returned ``code`` into ``out``, after checking that it
    succeeded and wrote its checkpoints, its history and ``pictures``."""
    assert code == 0
    for name in ("best.pt", "last.pt", "metrics.json", "history.csv", *pictures):
        assert (out / name).is_file(), name
    return json.loads((out / "metrics.json").read_text())


def one_error_line(capsys) -> str:
    """The one line the CLI wrote to stderr (fails when it wrote more or none)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def assert_loss_falls(task, state: dict, config: dict, inputs, targets, steps: int = 8, lr: float = 1e-3) -> list:
    """A few AdamW steps on one batch lower the loss (first vs last, and the last is the best half's)."""
    torch.manual_seed(0)
    model = task.build(config, state)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = task.loss(model(*_as_tuple(inputs)), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    return losses
