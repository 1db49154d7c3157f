"""The contract between a model file and the training engine.

A model file in ``deepfuse.models`` defines one ``Task`` subclass and an instance named ``TASK``. The task says
what the engine cannot know: how to read the data (a loader from ``deepfuse.data``), how to build the network
(from ``deepfuse.nn`` layers), its loss, its metrics, an example batch for benchmarks and profiling, and how to
turn user inputs into predictions. Everything generic — the loop, optimizer, checkpoints, distributed
training, metrics files, progress bars, plots of learning curves — lives in ``deepfuse.training``.

Tasks know no command line: model-specific settings are declared as ``Option``s and arrive in ``config``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deepfuse.training.loops import evaluate_split, supervised_epoch
from deepfuse.training.metrics import classification_metrics
from deepfuse.training.plots import confusion_matrix_png


@dataclass(frozen=True)
class Option:
    """A model-specific setting (the CLI offers it as ``--name-with-dashes``; its type is the default's)."""

    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None  # numbers: default 1 for positive int defaults, else 0


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

    def evaluate(self, outputs: torch.Tensor, targets: torch.Tensor, state: dict, split: str) -> dict[str, float]:
        """Metrics over a whole split (``outputs`` concatenated in dataset order). ``split`` is "val" or
        "test"; a task may fit something on "val" (a threshold) into ``state`` and use it on "test"."""
        return classification_metrics(outputs, targets)

    def plots(self, outputs: torch.Tensor, targets: torch.Tensor, state: dict, out_dir: Path, data: Data) -> list[Path]:
        """PNG files that show the final evaluation (a confusion matrix, a ROC curve ...)."""
        return [confusion_matrix_png(outputs, targets, out_dir / "confusion_matrix.png", state.get("classes"))]

    def predict(self, model: nn.Module, inputs: list[str], config: dict, state: dict, out_dir: Path) -> list[str]:
        """Lines to print for user inputs (files, texts); the model is in eval mode on the run's device."""
        raise NotImplementedError(f"{self.name} has no predict yet")

    # --- the loop (overridden by tasks that do not learn from a dataset, e.g. reinforcement learning) -------
    def train_epoch(self, run) -> dict[str, float]:
        """One epoch; returns training metrics (at least "loss")."""
        return supervised_epoch(run)

    def validate(self, run, split: str) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor | None]:
        """Metrics of ``split`` ("val" or "test"), with the outputs and targets they came from (or None)."""
        return evaluate_split(run, split)
