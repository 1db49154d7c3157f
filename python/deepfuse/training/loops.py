"""The supervised training epoch and the evaluation of a split, for every model that learns from a dataset."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, Dataset

from deepfuse.training.batching import EpochBatches, ShardBatches
from deepfuse.training.distributed import gather_objects, mean_over_processes


class NonFiniteLossError(ArithmeticError):
    """A training step's loss was inf or NaN: the weights it updated are unusable (the engine saves nothing)."""

    def __init__(self, run, value: float) -> None:
        super().__init__(f"epoch {run.epoch + 1}, step {run.step_in_epoch}: the training loss is {value}")
        self.epoch, self.step, self.value = run.epoch + 1, run.step_in_epoch, value


class SeededSamples(Dataset):
    """A training split whose items draw random numbers (augmentation): each item's draws come from torch's
    generator seeded by (seed, epoch, batch, place in the batch, rank), so that they are the same whatever the
    worker count and wherever a resumed epoch starts. Keys are those tuples; the global RNG is left as it was."""

    def __init__(self, dataset, seed: int, epoch: int, rank: int) -> None:
        self.dataset, self.seed, self.epoch, self.rank = dataset, seed, epoch, rank

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        batch, place, index = key
        with torch.random.fork_rng(devices=[]):
            # NOTE: hashing a tuple of ints is the same in every process (only str hashing is salted)
            # the CPU generator only (torch.manual_seed would queue a seed for every GPU as well)
            torch.default_generator.manual_seed(hash((self.seed, self.epoch, batch, place, self.rank)) & (2**63 - 1))
            return self.dataset[index]


def draws_random_numbers(dataset) -> bool:
    """Whether reading an item moves torch's generator (an augmenting dataset). Reads item 0 once."""
    with torch.random.fork_rng(devices=[]):
        before = torch.get_rng_state()
        dataset[0]
        return not torch.equal(before, torch.get_rng_state())


def loader(run, dataset, batch_sampler) -> DataLoader:
    workers = run.config["workers"]
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=run.data.collate,
        num_workers=workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(run.config["seed"] * 7919 + run.epoch),
    )


def supervised_epoch(run) -> dict[str, float]:
    """One pass over the training split; the loss is the mean over the epoch's samples (all processes).

    A resumed epoch starts at the batch after the last finished step, and its loss counts the batches trained
    before the interrupt too (``run.epoch_loss`` is checkpointed)."""
    data = run.data
    sampler = EpochBatches(
        len(data.train),
        run.config["batch_size"],
        run.config["seed"],
        run.epoch,
        run.place.rank,
        run.place.world,
        data.sample_weights,
        data.lengths,
        skip=run.step_in_epoch,
    )
    dataset = data.train
    if len(sampler) and draws_random_numbers(dataset):  # exact resume with augmentation, any worker count
        dataset = SeededSamples(dataset, run.config["seed"], run.epoch, run.place.rank)
        sampler = [
            [(run.step_in_epoch + b, place, i) for place, i in enumerate(batch)]
            for b, batch in enumerate(sampler.batches)
        ]
    run.model.train()
    seen, start = 0, time.perf_counter()
    run.mark_finished_step()  # an interrupt inside the first batch rewinds to here
    progress = run.progress(len(sampler), f"epoch {run.epoch + 1}/{run.config['epochs']}")
    for inputs, targets in loader(run, dataset, sampler):
        inputs, targets = run.to_device(inputs), run.to_device(targets)
        with run.autocast():
            outputs = run.forward(inputs)
            loss = run.task.loss(outputs, targets)
        count = len(targets)
        value = run.optimizer_step(loss, count)  # a non-finite loss raises NonFiniteLossError
        seen += count
        progress.update(1)
        progress.set_postfix(loss=f"{value:.4f}", samples_per_s=f"{seen / (time.perf_counter() - start):.0f}")
    progress.close()
    seconds = time.perf_counter() - start
    total, samples = run.epoch_loss
    # an epoch whose every batch was trained before a resume that saved no loss (an older checkpoint): unknown
    result = mean_over_processes({"loss": total / samples if samples else float("nan")}, run.place, weight=samples)
    result["samples_per_s"] = seen * run.place.world / max(seconds, 1e-9)
    return result


@torch.no_grad()
def outputs_of_split(run, dataset) -> tuple[torch.Tensor, torch.Tensor]:
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


def split_metrics(run, split: str):
    """Loss and the task's metrics over ``split`` ("val" or "test"), with the outputs and targets."""
    dataset = getattr(run.data, split)
    if dataset is None or len(dataset) == 0:
        return {}, None, None
    outputs, targets = outputs_of_split(run, dataset)
    metrics = {"loss": run.task.loss(outputs, targets).item()}
    metrics.update(run.task.metrics(outputs, targets, run.data.state, split))
    return metrics, outputs, targets
