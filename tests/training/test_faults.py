"""Fault injection: interrupts inside a batch, concurrent runs into one folder, unwritable and full disks,
non-finite numbers, changed settings on resume, degenerate data. Each fault gives the right result or one line
(exit code 2, or 130 for Ctrl-C), and nothing written before it is lost. Tiny data, one thread: fast in CI."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepfuse import models
from deepfuse.models.task import Data, Task
from deepfuse.training import make_config
from deepfuse.training.checkpoint import load_checkpoint
from deepfuse.training.engine import fit, prepare

DIGITS = models.get("digits")


class DropoutTask(Task):
    """A small MLP with dropout (no BatchNorm) on synthetic data: every training forward draws from the RNG."""

    name = "dropout-mlp"
    defaults = {"epochs": 2, "batch_size": 16, "lr": 1e-2, "weight_decay": 0.0}

    def load_data(self, path, config, state=None):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(200, 8, generator=generator)
        y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
        return Data(TensorDataset(x[:160], y[:160]), TensorDataset(x[160:], y[160:]), state={"classes": ["0", "1"]})

    def build(self, config, state):
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))

    def plots(self, outputs, targets, state, out_dir, data):
        return []


DROPOUT = DropoutTask()
# (task, epochs, the finished steps after which the interrupt cuts the next batch): a cut in the second epoch
CASES = {"digits": (DIGITS, 2, 26), "dropout-mlp": (DROPOUT, 2, 14)}


def quiet(_line):
    pass


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    """PNGs are not what these tests check, and they are most of a tiny run's time."""
    import deepfuse.training.plots

    monkeypatch.setattr(deepfuse.training.plots, "learning_curves_png", lambda *args: None)
    monkeypatch.setattr(type(DIGITS), "plots", lambda *args: [])


def config_for(task, out, **overrides):
    return make_config(task, **{"out": str(out), "epochs": CASES[task.name][1], "progress": False, **overrides})


def train_to_end(task, config, resume=False, interrupt=None):
    """prepare + fit, with ``interrupt(run)`` arming a fault first."""
    run = prepare(task, config, resume)
    if interrupt is not None:
        interrupt(run)
    return fit(run, log=quiet)


def interrupt_in_forward(after_steps):
    """Ctrl-C from inside the model's last layer (BatchNorm statistics and dropout already drawn for the batch)."""

    def arm(run):
        def hook(module, inputs, output):
            if module.training and run.global_step == after_steps:
                raise KeyboardInterrupt

        list(run.raw_model.modules())[-1].register_forward_hook(hook)

    return arm


def interrupt_in_loss(after_steps, monkeypatch):
    def arm(run):
        loss = run.task.loss

        def cut(outputs, targets):
            value = loss(outputs, targets)
            if outputs.requires_grad and run.global_step == after_steps:
                raise KeyboardInterrupt
            return value

        monkeypatch.setattr(run.task, "loss", cut)

    return arm


def assert_same_training_state(expected: dict, actual: dict) -> None:
    """Weights, buffers, the whole optimizer state (every tensor of every parameter, and step) and the scheduler
    are bitwise equal."""
    assert expected["global_step"] == actual["global_step"]
    assert expected["model_state"].keys() == actual["model_state"].keys()
    for name, value in expected["model_state"].items():
        assert torch.equal(value, actual["model_state"][name]), f"{name} differs"
    a, b = expected["optimizer"], actual["optimizer"]
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            same = torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
            assert same, f"optimizer state of parameter {index}: {key} differs"
    assert expected["scheduler"] == actual["scheduler"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final last.pt of each case's uninterrupted run (computed once)."""
    done = {}

    def get(name):
        if name not in done:
            task = CASES[name][0]
            out = tmp_path_factory.mktemp(f"straight-{name}")
            train_to_end(task, config_for(task, out))
            done[name] = load_checkpoint(out / "last.pt")
        return done[name]

    return get


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("where", ["forward", "loss"])
@pytest.mark.parametrize("name", list(CASES))
def test_ctrl_c_inside_a_batch_resumes_bitwise(name, where, workers, tmp_path, monkeypatch, uninterrupted):
    task, epochs, after = CASES[name]
    arm = interrupt_in_forward(after) if where == "forward" else interrupt_in_loss(after, monkeypatch)
    config = config_for(task, tmp_path, workers=workers)
    with pytest.raises(KeyboardInterrupt):
        train_to_end(task, config, interrupt=arm)
    saved = load_checkpoint(tmp_path / "last.pt")
    assert saved["global_step"] == after and saved["epoch"] == 1, "the checkpoint is not at the last finished step"
    monkeypatch.setattr(task, "loss", type(task).loss.__get__(task))
    train_to_end(task, config_for(task, tmp_path, workers=workers), resume=True)
    assert_same_training_state(uninterrupted(name), load_checkpoint(tmp_path / "last.pt"))
