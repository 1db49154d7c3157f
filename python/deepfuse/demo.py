"""The demo, and the main job on a fresh machine: train the digits CNN on scikit-learn's bundled digits.

Prints which backend runs each layer, trains through the engine (checkpoints, metrics.json, learning curves,
confusion matrix, a grid of misclassified digits in the run folder) and the test accuracy. On a GPU it also
times one training step on deepfuse's kernels against plain torch, in the same process.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

import deepfuse
from deepfuse import models
from deepfuse.bench.timing import measure
from deepfuse.training import make_config
from deepfuse.training.engine import fit, prepare
from deepfuse.training.layers import format_layer_backends, layer_backends

TARGET_ACCURACY = 0.97  # on the built-in digits' test split


def run(epochs: int = 5, out: str | None = None, backend: str | None = None, seed: int = 0) -> dict:
    task = models.get("digits")
    out = out or str(Path("runs") / "demo" / time.strftime("%Y%m%d-%H%M%S"))
    config = make_config(task, epochs=epochs, out=out, backend=backend or "auto", seed=seed)
    training = prepare(task, config)
    try:
        metrics = _show_and_train(training, backend)
    finally:
        training.release()
    verdict = "meets" if metrics["accuracy"] >= TARGET_ACCURACY else "MISSES"
    print(f"digits test accuracy {metrics['accuracy']:.4f} ({verdict} the target {TARGET_ACCURACY})")
    return {**metrics, "target": TARGET_ACCURACY}


def _show_and_train(training, backend: str | None) -> dict:
    """The backends and each layer's, a step-time comparison on a GPU, then the training run."""
    print(f"deepfuse {deepfuse.__version__} on {training.device}; {training.data.summary}")
    for name, (ok, reason) in deepfuse.available_backends().items():
        print(f"  backend {name:<7} {'available' if ok else 'unavailable'}{': ' + reason if reason else ''}")
    inputs, _ = _first_batch(training, 64)
    model = training.raw_model
    with deepfuse.use_backend(backend), torch.no_grad():
        model.eval()
        print("layers (backend each one runs on):")
        print(format_layer_backends(layer_backends(model, lambda: model(inputs))))
    if training.device.type == "cuda":
        _compare_step_time(training, backend)
    return fit(training)


def _first_batch(training, size: int):
    dataset = training.data.train
    inputs, targets = default_collate([dataset[i] for i in range(min(size, len(dataset)))])
    return training.to_device(inputs), training.to_device(targets)


def _compare_step_time(training, backend: str | None) -> None:
    """Median training-step time (forward, backward, AdamW) on deepfuse's kernels vs plain torch, same run."""
    inputs, targets = _first_batch(training, 256)
    times = {}
    for name in (backend or "auto", "torch"):
        model = copy.deepcopy(training.raw_model).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, optimizer=optimizer, name=name):
            optimizer.zero_grad(set_to_none=True)
            with deepfuse.use_backend(name):
                training.task.loss(model(inputs), targets).backward()
            optimizer.step()

        times[name] = measure(step, training.device)["median_ms"]
    ours, theirs = times[backend or "auto"], times["torch"]
    print(
        f"train step, batch 256: deepfuse ({backend or 'automatic'}) {ours:.3f} ms, plain torch {theirs:.3f} ms "
        f"({theirs / ours:.2f}x)"
    )
