"""What the two image classifiers (catsdogs, chest_xray) share: channels-last batches on CUDA, the user's image
files checked for predict, and P(class 1) per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfuse.data import DataError
from deepfuse.data.images import ImageDataset, ImageTransform, check_images, input_images


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
    from torch.utils.data import DataLoader

    from deepfuse.training.metrics import positive_probability

    device = next(model.parameters()).device
    loader = DataLoader(ImageDataset(files, None, transform), batch_size=config.get("batch_size", 64),
                        num_workers=config.get("workers", 0), pin_memory=device.type == "cuda")  # fmt: skip
    parts = [positive_probability(model(images.to(device, non_blocking=True))) for images, _ in loader]
    return np.concatenate(parts) if parts else np.zeros(0)
