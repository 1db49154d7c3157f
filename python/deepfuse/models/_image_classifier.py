"""What the two image classifiers (catsdogs, chest_xray) share: their options and the state a run keeps, their
Task's transform, example and datasets, their residual CNN, channels-last batches on CUDA, the user's image files
checked for predict, and P(class 1) per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepfuse.data import DataError
from deepfuse.data.images import Augment, ImageDataset, ImageTransform, check_images, input_images
from deepfuse.nn import ConvBNAct, FusedLinear, ResidualBlock
from deepfuse.training.metrics import positive_probability
from deepfuse.training.task import Data, Option, Task


def image_options(image_size: int, min_image_size: int, val_help: str) -> dict[str, Option]:
    """--image-size (at least ``min_image_size``: BatchNorm in the last stage needs 2x2 pixels to train on),
    --width, --val-fraction, --skip-bad."""
    return {
        "image_size": Option(
            image_size,
            "side of the square the images are resized to (the last stage keeps 1/16 or 1/32 of it)",
            minimum=min_image_size,
        ),
        "width": Option(32, "channels of the first stage (then 2x, 4x, 8x)"),
        "val_fraction": Option(0.1, val_help, maximum=0.9),
        "skip_bad": Option(False, "skip unreadable image files (counted in one warning) instead of stopping"),
    }


def image_state(settings: dict, mean, std, classes: list[str]) -> dict:
    """What a run fits and keeps (``Data.state``): the image size and network width it was built with, the
    normalisation, the class names."""
    return {
        "image_size": int(settings["image_size"]),
        "width": int(settings["width"]),
        "mean": list(mean),
        "std": list(std),
        "classes": classes,
    }


class ImageClassifierTask(Task):
    """A two-class image classifier: subclasses set ``channels``, ``mean``, ``std``, ``classes`` and the training
    ``augment`` (besides Task's attributes), and build their Data with ``image_data``."""

    channels: int = 3
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: list[str] = []
    augment: Augment | None = None

    def initial_state(self, settings: dict) -> dict:
        """The state a new run starts from (``image_state``); a subclass adds what it fits later."""
        return image_state(settings, self.mean, self.std, self.classes)

    def transform(self, state: dict, train: bool) -> ImageTransform:
        augment = self.augment if train else None
        return ImageTransform(state["image_size"], self.channels, tuple(state["mean"]), tuple(state["std"]), augment)

    def settings_and_state(self, path: Path | None, config: dict, state: dict | None) -> tuple[dict, dict]:
        """(the options with their defaults, ``state`` or a new run's); DataError when --data is missing."""
        if path is None:
            raise DataError(None, f"--data is required: {self.data_help}")
        settings = self.with_defaults(config)
        return settings, state or self.initial_state(settings)

    def image_data(self, train: list, val: list, test: list | None, state: dict, **data) -> Data:
        """Data of (file, label) lists: ``train`` augmented, ``val`` and ``test`` (None or empty: none) not;
        ``data``: Data's other fields (summary, sample_weights)."""

        def dataset(items, train_mode):
            return ImageDataset([f for f, _ in items], [y for _, y in items], self.transform(state, train_mode))

        test_set = dataset(test, False) if test else None
        return Data(dataset(train, True), dataset(val, False), test_set, state=state, **data)

    def example(self, batch_size: int, config: dict):
        state = self.initial_state(self.with_defaults(config))
        size = state["image_size"]
        return state, torch.randn(batch_size, self.channels, size, size), torch.randint(0, 2, (batch_size,))


def to_channels_last(images: torch.Tensor) -> torch.Tensor:
    """On CUDA the convolution kernels run NHWC (they keep the input's memory format); on the CPU, NCHW."""
    return images.contiguous(memory_format=torch.channels_last) if images.is_cuda else images


def readable_inputs(inputs: list[str], config: dict) -> list[Path]:
    """The checked image files named by ``inputs`` (skip_bad as the run was trained); DataError if none is left."""
    files = check_images(input_images(inputs), bool(config.get("skip_bad", False)))
    if not files:
        raise DataError(None, f"no readable image among the inputs: {' '.join(inputs)}")
    return files


def predict_probabilities(model: nn.Module, files: list[Path], transform: ImageTransform, config: dict) -> np.ndarray:
    """P(class 1) of each file, batched through a DataLoader (decoding in ``workers`` processes)."""
    device = next(model.parameters()).device
    loader = DataLoader(
        ImageDataset(files, None, transform),
        batch_size=config.get("batch_size", 64),
        num_workers=config.get("workers", 0),
        pin_memory=device.type == "cuda",
    )
    parts = [positive_probability(model(images.to(device, non_blocking=True))) for images, _ in loader]
    return np.concatenate(parts) if parts else np.zeros(0)


class ResidualCNN(nn.Module):
    """Stem (3x3 stride-2 ConvBNAct, 3x3 ConvBNAct, optionally a 2x2 max-pool), six ResidualBlocks (w, 2w, 4w, 8w
    channels; stride 2 at each widening), global average pool, dropout, FusedLinear(8w -> classes)."""

    def __init__(
        self, in_channels: int, width: int = 32, classes: int = 2, dropout: float = 0.2, stem_pool: bool = False
    ) -> None:
        super().__init__()
        w = width
        stem = [ConvBNAct(in_channels, w, 3, stride=2, padding=1), ConvBNAct(w, w, 3, padding=1)]
        self.stem = nn.Sequential(*stem, *([nn.MaxPool2d(2)] if stem_pool else []))
        self.stages = nn.Sequential(
            ResidualBlock(w, w),
            ResidualBlock(w, 2 * w, stride=2),
            ResidualBlock(2 * w, 2 * w),
            ResidualBlock(2 * w, 4 * w, stride=2),
            ResidualBlock(4 * w, 4 * w),
            ResidualBlock(4 * w, 8 * w, stride=2),
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), FusedLinear(8 * w, classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(to_channels_last(images))))
