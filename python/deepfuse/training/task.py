"""The contract between a model file and the training engine.

A model file in ``deepfuse.models`` defines one ``Task`` subclass and an instance named ``TASK``. The task says
what the engine cannot know: how to read the data (a loader from ``deepfuse.data``), how to build the network
(from ``deepfuse.nn`` layers), its loss, its metrics, an example batch for benchmarks and profiling, and how to
turn user inputs into predictions. Everything generic — the loop, optimizer, checkpoints, distributed
training, metrics files, progress bars, plots of learning curves — lives in ``deepfuse.training``.

Tasks know no command line: model-specific settings are declared as ``Option``s and arrive in ``config``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deepfuse.training.loops import split_metrics, supervised_epoch
from deepfuse.training.metrics import classification_metrics
from deepfuse.training.plots import confusion_matrix_png


class RunError(ValueError):
    """A user mistake that stops a run before it starts (a setting out of its limits, a bad device, an --out
    holding another run...): reported as one line."""


def flag(name: str) -> str:
    """The command-line flag of a setting: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """A setting (a model's own, offered by the CLI as ``--name-with-dashes``; its type is the default's) with
    its limits, checked in one place (``check_settings``). ``minimum``/``maximum`` bound a number (inclusive); a
    number with neither ``minimum`` nor ``check`` must be at least 1 when its default is a positive int, else at
    least 0. ``check`` returns what a value must be ("a multiple of 16") when it is not, else None. None is
    always allowed where the default is None (off)."""

    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    check: Callable[[Any], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        """What ``value`` must be, when it is not within this option's limits; None when it is."""
        if value is None and self.default is None:
            return None
        if self.choices is not None and value not in self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if isinstance(value, float) and not math.isfinite(value):
            return "a finite number"
        if isinstance(value, int | float) and not isinstance(value, bool):
            minimum = self.minimum
            default_is_number = not isinstance(self.default, bool) and isinstance(self.default, int | float)
            if minimum is None and self.check is None and default_is_number:
                minimum = 1 if isinstance(self.default, int) and self.default > 0 else 0
            if minimum is not None and self.maximum is not None and not minimum <= value <= self.maximum:
                return f"in [{minimum:g}, {self.maximum:g}]"
            if minimum is not None and value < minimum:
                return f"at least {minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"at most {self.maximum:g}"
        return self.check(value) if self.check is not None else None


def with_defaults(options: dict[str, Option], config: dict) -> dict:
    """``config`` with every setting of ``options`` it lacks at its default (``config`` wins)."""
    return {name: option.default for name, option in options.items()} | config


def positive(value: float) -> str | None:
    """An ``Option.check``: above zero."""
    return None if value > 0 else "positive"


def check_settings(options: dict[str, Option], config: dict) -> None:
    """Every setting of ``config`` that ``options`` limits is within its limits, or one RunError in one format:
    ``--name must be <what>, got <value>``."""
    for name, option in options.items():
        if name in config:
            problem = option.problem(config[name])
            if problem is not None:
                raise RunError(f"{flag(name)} must be {problem}, got {config[name]}")


@dataclass
class Data:
    """A model's data, split. Items of each dataset are ``(inputs, target)``; ``inputs`` is a tensor or a
    tuple of tensors (the model is called as ``model(*inputs)``).

    ``state`` holds what was fitted on the training split (a vocabulary, a normaliser, a decision threshold):
    it is saved in every checkpoint and handed back to ``load_data``/``build``/``predict`` later, so that
    eval and predict use the very same. ``sample_weights`` (one per training item) turns on weighted sampling;
    ``lengths`` (one per training item) turns on length-bucketed batches.
    """

    train: Dataset | None
    val: Dataset | None
    test: Dataset | None = None
    state: dict = field(default_factory=dict)
    collate: Callable | None = None
    sample_weights: Sequence[float] | None = None
    lengths: Sequence[int] | None = None
    summary: str = ""


class Task:
    """Base class of every model. Subclasses set the class attributes and implement the methods marked
    "required"; the defaults suit a supervised model whose outputs are logits."""

    name: str = ""
    description: str = ""
    data_help: str = ""  # what --data expects, for help and error messages
    metric: str = "accuracy"  # the validation metric that picks the best checkpoint
    maximize: bool = True
    defaults: dict = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.0}
    options: dict[str, Option] = {}
    # early stopping by default: stop after this many epochs without a better validation metric (None: off;
    # --patience overrides it)
    default_patience: int | None = None
    # Why a training step of this model cannot be captured in a CUDA graph (it reads data-dependent sizes on the
    # host), or None when its forward and backward never wait for the GPU (tests/test_host_sync.py checks both).
    cuda_graphs_blocker: str | None = None
    # when the engine steps the learning-rate scheduler of ``optimizer``: after every optimizer "step", or after
    # every "epoch" (a reinforcement-learning iteration whose minibatch count is not the schedule's unit)
    scheduler_interval: str = "step"

    # --- settings --------------------------------------------------------------------------------------------
    def with_defaults(self, config: dict) -> dict:
        """``config`` with every option it lacks at its default: benchmarks and tests call ``build``/``example``
        with a partial config, and a checkpoint written before an option existed holds none."""
        return with_defaults(self.options, config)

    def settings_problem(self, config: dict) -> str | None:
        """What is wrong with a combination of settings, as one line naming the flags (each option's own limits
        are its ``Option``'s); None when nothing is. Checked with the limits, before a run reads anything."""
        return None

    # --- required -------------------------------------------------------------------------------------------
    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        """The splits. ``state`` is None when training from scratch (fit on the training split) and the
        checkpoint's state otherwise. A user error (missing file, bad format) raises
        ``deepfuse.data.DataError``."""
        raise NotImplementedError

    def build(self, config: dict, state: dict) -> nn.Module:
        """The network, on the CPU in float32 (the engine moves it)."""
        raise NotImplementedError

    def example(self, batch_size: int, config: dict) -> tuple[dict, Any, torch.Tensor]:
        """``(state, inputs, targets)``: a random batch with real shapes, for benchmarks and profiling
        (``build(config, state)`` must accept it)."""
        raise NotImplementedError

    # --- defaults for classifiers ----------------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs.float(), targets)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor, state: dict, split: str) -> dict[str, float]:
        """Metrics over a whole split (``outputs`` concatenated in dataset order). ``split`` is "val" or
        "test"; a task may fit something on "val" (a threshold) into ``state`` and use it on "test"."""
        return classification_metrics(outputs, targets)

    def plots(self, outputs: torch.Tensor, targets: torch.Tensor, state: dict, out_dir: Path, data: Data) -> list[Path]:
        """PNG files that show the final evaluation (a confusion matrix, a ROC curve ...)."""
        return [confusion_matrix_png(outputs, targets, out_dir / "confusion_matrix.png", state.get("classes"))]

    def predict_inputs(
        self, model: nn.Module, inputs: list[str], config: dict, state: dict, out_dir: Path
    ) -> list[str]:
        """Lines to print for user inputs (files, texts); the model is in eval mode on the run's device."""
        raise NotImplementedError(f"{self.name} has no predict yet")

    # --- the loop (overridden by tasks that do not learn from a dataset, e.g. reinforcement learning) -------
    def train_epoch(self, run) -> dict[str, float]:
        """One epoch; returns training metrics (at least "loss")."""
        return supervised_epoch(run)

    def validate(self, run, split: str) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor | None]:
        """Metrics of ``split`` ("val" or "test"), with the outputs and targets they came from (or None)."""
        return split_metrics(run, split)
