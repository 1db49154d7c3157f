"""Handwritten digits: a small CNN of fused blocks on MNIST's IDX files, or on scikit-learn's bundled 8x8 digits.

Network: two ConvBNAct stages (conv → BatchNorm → ReLU, BN folded into the convolution in eval), each two 3x3
blocks and a 2x2 max-pool, then FusedLinear(→128, ReLU), dropout and FusedLinear(→10). The same network reads
8x8 and 28x28 images; the flattened size follows the image size.

Targets: >= 0.97 test accuracy on the built-in digits; >= 99.3 % on full MNIST in <= 5 epochs (untested until
someone runs it on the full set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepfuse.data import DataError
from deepfuse.data.digits import load_mnist_splits, load_splits, read_digit_images
from deepfuse.nn import ConvBNAct, FusedLinear
from deepfuse.training.plots import image_grid_png
from deepfuse.training.task import Data, Task

CLASSES = [str(d) for d in range(10)]


class DigitsNet(nn.Module):
    def __init__(self, image_size: int, width: int = 32, classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(1, width, 3, padding=1),
            ConvBNAct(width, width, 3, padding=1),
            nn.MaxPool2d(2),
            ConvBNAct(width, 2 * width, 3, padding=1),
            ConvBNAct(2 * width, 2 * width, 3, padding=1),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * (image_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            FusedLinear(flat, 128, activation="relu"),
            nn.Dropout(dropout),
            FusedLinear(128, classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def _dataset(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> TensorDataset:
    x = (torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) - mean) / std
    return TensorDataset(x[:, None], torch.from_numpy(labels))


class DigitsTask(Task):
    name = "digits"
    description = "handwritten digits (CNN): MNIST IDX files, or scikit-learn's bundled 8x8 digits by default"
    data_help = "a folder holding MNIST's IDX files (train-images-idx3-ubyte[.gz], train-labels-..., t10k-...)"
    metric = "accuracy"
    defaults = {"epochs": 5, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4}

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        if path is None:
            splits = load_splits()
            source = "scikit-learn digits (8x8)"
        else:
            splits = load_mnist_splits(path)
            source = f"MNIST IDX files in {path}"
        for split, (images, _) in splits.items():
            if len(images) == 0:
                raise DataError(path, f"the {split} split is empty")
        if state is None:
            train_images = splits["train"][0]
            state = {
                "image_size": int(train_images.shape[-1]),
                "mean": float(train_images.mean()),
                "std": float(train_images.std()),
                "classes": CLASSES,
            }
        size = splits["train"][0].shape[-1]
        if size != state["image_size"]:
            raise DataError(path, f"images are {size}x{size}, the checkpoint's model reads {state['image_size']}")
        datasets = {k: _dataset(*v, state["mean"], state["std"]) for k, v in splits.items()}
        counts = " / ".join(f"{len(d)} {k}" for k, d in datasets.items())
        return Data(datasets["train"], datasets["val"], datasets["test"], state=state, summary=f"{source}: {counts}")

    def build(self, config: dict, state: dict) -> nn.Module:
        return DigitsNet(state["image_size"])

    def example(self, batch_size: int, config: dict):
        state = {"image_size": 28, "mean": 0.13, "std": 0.31, "classes": CLASSES}
        return state, torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))

    def plots(self, outputs, targets, state, out_dir, data):
        pictures = super().plots(outputs, targets, state, out_dir, data)
        split = data.test if data.test is not None else data.val
        predicted = outputs.argmax(-1)
        wrong = (predicted != targets).nonzero().flatten()[:32].tolist()
        images = torch.stack([split[i][0] for i in wrong]) if wrong else torch.zeros(0, 1, 8, 8)
        captions = [f"true {targets[i].item()} → {predicted[i].item()}" for i in wrong]
        pictures.append(
            image_grid_png(
                images,
                captions,
                out_dir / "misclassified.png",
                f"misclassified: {len(wrong)} shown of {(predicted != targets).sum().item()}",
            )
        )
        return pictures

    def predict_inputs(self, model, inputs, config, state, out_dir):
        images, names = read_digit_images(inputs, state["image_size"])
        x = ((images - state["mean"]) / state["std"])[:, None].to(next(model.parameters()).device)
        probabilities = torch.softmax(model(x).float(), -1).cpu()
        best = probabilities.max(-1)
        return [
            f"{name}: {best.indices[i].item()} (probability {best.values[i].item():.3f})"
            for i, name in enumerate(names)
        ]


TASK = DigitsTask()
