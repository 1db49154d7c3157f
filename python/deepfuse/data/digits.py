"""Handwritten digits' data: scikit-learn's bundled digits (1,797 real 8x8 scans, values 0-16), the built-in
dataset that needs no download, split with a fixed seed into train / validation / test (70 / 15 / 15 %),
stratified; MNIST's IDX files with a fixed validation split carved from train; and the images a user gives to
``predict`` (image files or IDX files), decoded as MNIST's: gray in [0, 1], white digit on black."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from deepfuse.data.errors import DataError
from deepfuse.data.images import load_image
from deepfuse.data.mnist import IMAGES_MAGIC, load_split, read_idx

SPLIT_SEED = 0  # fixed: every run and every checkpoint sees the same test split


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train" | "val" | "test": (images (N, 8, 8) float32 in [0, 1], labels (N,) int64)}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=0.3, random_state=SPLIT_SEED, stratify=labels
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=SPLIT_SEED, stratify=y_rest
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def load_mnist_splits(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train" | "val" | "test": (images (N, 28, 28) float32 in [0, 1], labels (N,))} from MNIST's IDX files in
    ``path``; val is a fixed 5,000 images (a tenth of a smaller set) carved from train, the test split untouched."""
    train_images, train_labels = load_split(path, "train")
    test_images, test_labels = load_split(path, "test")
    train_images = train_images.astype(np.float32) / 255.0
    order = np.random.default_rng(SPLIT_SEED).permutation(len(train_images))
    val, train = order[: min(5000, len(order) // 10)], order[min(5000, len(order) // 10) :]
    return {
        "train": (train_images[train], train_labels[train]),
        "val": (train_images[val], train_labels[val]),
        "test": (test_images.astype(np.float32) / 255.0, test_labels),
    }


def read_digit_images(inputs: list[str], size: int) -> tuple[torch.Tensor, list[str]]:
    """(images (N, size, size) float32 in [0, 1], white digit on black; their names) from image files (one image
    each) or IDX image files (``*idx3*``, every image in them). A missing or unreadable file is a DataError."""
    images, names = [], []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise DataError(path, "no such file (expected an image file or an IDX images file)")
        if "idx3" in path.name:
            array = read_idx(path, IMAGES_MAGIC).astype(np.float32) / 255.0
            images += [_resize(a, size) for a in array]
            names += [f"{path.name}[{i}]" for i in range(len(array))]
        else:
            images.append(_resize(read_digit_image(path), size))
            names.append(path.name)
    return torch.from_numpy(np.stack(images)).float(), names


def read_digit_image(path: Path) -> np.ndarray:
    """One image file as gray float32 in [0, 1], white on black (transparency over white, EXIF orientation)."""
    gray = np.asarray(load_image(path, channels=1), dtype=np.float32) / 255.0
    # MNIST digits are white on black; a photo or scan of ink on paper is the other way round
    return 1.0 - gray if gray.mean() > 0.5 else gray


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape == (size, size):
        return image
    from PIL import Image  # optional dependency (the models extra)

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32)
