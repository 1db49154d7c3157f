"""scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, values 0-16): the built-in dataset that
needs no download. Split with a fixed seed into train / validation / test (70 / 15 / 15 %), stratified."""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0  # fixed: every run and every checkpoint sees the same test split


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train" | "val" | "test": (images (N, 8, 8) float32 in [0, 1], labels (N,) int64)}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(images, labels, test_size=0.3, random_state=SPLIT_SEED,
                                                        stratify=labels)  # fmt: skip
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, random_state=SPLIT_SEED,
                                                    stratify=y_rest)  # fmt: skip
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
