"""A tiny task for the distributed test, run by torchrun (two gloo processes) and by one plain process.

Usage: python -m tests.training.ddp_task OUT BATCH_SIZE
"""

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepfuse.nn import FusedLinear
from deepfuse.training import make_config, train
from deepfuse.training.task import Data, Task

SAMPLES = 96  # divisible by every global batch the test uses: equal parts on both processes


class TinyTask(Task):
    name = "tiny"
    defaults = {"epochs": 2, "batch_size": 8, "lr": 1e-2, "weight_decay": 0.0}

    def load_data(self, path, config, state=None):
        generator = torch.Generator().manual_seed(5)
        x = torch.randn(SAMPLES + 32, 6, generator=generator)
        y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long()
        return Data(
            TensorDataset(x[:SAMPLES], y[:SAMPLES]),
            TensorDataset(x[SAMPLES:], y[SAMPLES:]),
            state={},
            summary="synthetic",
        )

    def build(self, config, state):
        return nn.Sequential(FusedLinear(6, 16, activation="gelu"), nn.Dropout(0.0), FusedLinear(16, 2))

    def example(self, batch_size, config):
        return {}, torch.randn(batch_size, 6), torch.randint(0, 2, (batch_size,))


if __name__ == "__main__":
    out, batch_size = sys.argv[1], int(sys.argv[2])
    task = TinyTask()
    train(task, make_config(task, out=out, batch_size=batch_size, device="cpu", progress=False), log=lambda _: None)
