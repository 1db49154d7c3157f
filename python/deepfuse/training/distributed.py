"""Distributed training from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): NCCL on GPUs, gloo on CPUs.

Without those variables everything here is a single process and every collective is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, metrics files and progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device_type: str) -> Distributed:
    """Join the process group torchrun describes (if any); returns this process's place in it."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(rank, world, local_rank)


def teardown(place: Distributed) -> None:
    if place.active and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_processes(values: dict[str, float], place: Distributed, weight: float = 1.0) -> dict[str, float]:
    """Weighted means of ``values`` over all processes (weight: this process's sample count)."""
    if not place.active:
        return dict(values)
    keys = sorted(values)
    totals = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
    dist.all_reduce(totals)
    return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}


def gather_objects(obj, place: Distributed) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not place.active:
        return [obj]
    gathered = [None] * place.world
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(place: Distributed) -> None:
    if place.active:
        dist.barrier()
