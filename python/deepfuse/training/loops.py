"""The supervised training epoch and the evaluation of a split, for every model that learns from a dataset."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from deepfuse.training.batching import EpochBatches, ShardBatches
from deepfuse.training.distributed import gather_objects, mean_over_processes


def loader(run, dataset, batch_sampler) -> DataLoader:
    workers = run.config["workers"]
    return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=run.data.collate, num_workers=workers,
                      pin_memory=run.device.type == "cuda", persistent_workers=False,
                      generator=torch.Generator().manual_seed(run.config["seed"] * 7919 + run.epoch))  # fmt: skip


def supervised_epoch(run) -> dict[str, float]:
    """One pass over the training split; the loss is the mean over the epoch's samples (all processes)."""
    data = run.data
    sampler = EpochBatches(len(data.train), run.config["batch_size"], run.config["seed"], run.epoch,
                           run.place.rank, run.place.world, data.sample_weights, data.lengths,
                           skip=run.step_in_epoch)  # fmt: skip
    run.model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    progress = run.progress(len(sampler), f"epoch {run.epoch + 1}/{run.config['epochs']}")
    for inputs, targets in loader(run, data.train, sampler):
        inputs, targets = run.to_device(inputs), run.to_device(targets)
        with run.autocast():
            outputs = run.forward(inputs)
            loss = run.task.loss(outputs, targets)
        run.backward_and_step(loss)
        count = len(targets)
        total_loss += loss.item() * count
        seen += count
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{seen / (time.perf_counter() - start):.0f}")
    progress.close()
    seconds = time.perf_counter() - start
    # an epoch resumed after its last batch trained nothing: its loss is unknown, not 0
    result = mean_over_processes({"loss": total_loss / seen if seen else float("nan")}, run.place, weight=seen)
    result["samples_per_s"] = seen * run.place.world / max(seconds, 1e-9)
    return result


@torch.no_grad()
def predict_split(run, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets of a whole split in dataset order (each process runs its shard; all gather)."""
    run.model.eval()
    sampler = ShardBatches(len(dataset), run.config["batch_size"], run.place.rank, run.place.world)
    outputs, targets = [], []
    for inputs, target in loader(run, dataset, sampler):
        with run.autocast():
            outputs.append(run.forward(run.to_device(inputs)).float().cpu())
        targets.append(target.cpu())
    part = (torch.cat(outputs) if outputs else None, torch.cat(targets) if targets else None)
    parts = [p for p in gather_objects(part, run.place) if p[0] is not None]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def evaluate_split(run, split: str):
    """Loss and the task's metrics over ``split`` ("val" or "test"), with the outputs and targets."""
    dataset = getattr(run.data, split)
    if dataset is None or len(dataset) == 0:
        return {}, None, None
    outputs, targets = predict_split(run, dataset)
    metrics = {"loss": run.task.loss(outputs, targets).item()}
    metrics.update(run.task.evaluate(outputs, targets, run.data.state, split))
    return metrics, outputs, targets
