"""MNIST's IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``, ``t10k-*``), gzip or raw.

IDX: a big-endian header — magic ``0x0000 08 NN`` (08: unsigned bytes; NN: number of dimensions), then one
uint32 per dimension — then the data. Images: (N, 28, 28) uint8, white digits on black; labels (N,) uint8.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from deepfuse.data.errors import DataError

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """The array in one IDX file (gzip-compressed when it starts with gzip's magic bytes)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(path, "no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(path, f"not a readable gzip file ({error})") from None
    if len(raw) < 4:
        raise DataError(path, f"truncated: {len(raw)} bytes, an IDX header needs at least 4")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic >> 8 != 0x08 or not 1 <= (magic & 0xFF) <= 4:
        raise DataError(path, f"not an IDX file of unsigned bytes (magic number 0x{magic:08x})")
    if expected_magic is not None and magic != expected_magic:
        kind = "images (0x00000803)" if expected_magic == IMAGES_MAGIC else "labels (0x00000801)"
        raise DataError(path, f"magic number 0x{magic:08x}, expected MNIST {kind}")
    dims = magic & 0xFF
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataError(path, "truncated header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(
            path, f"truncated or padded: the header promises {size} bytes of data, the file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(folder: Path, stem: str) -> Path:
    """``folder/stem`` or ``folder/stem.gz`` (also one level down, e.g. ``MNIST/raw``)."""
    for candidate in (folder / stem, folder / f"{stem}.gz", *folder.glob(f"*/{stem}"), *folder.glob(f"*/{stem}.gz")):
        if candidate.is_file():
            return candidate
    raise DataError(folder / stem, "missing (expected the MNIST IDX file, raw or .gz)")


def load_split(folder: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of "train" or "test"."""
    folder = Path(folder)
    if folder.is_file():
        raise DataError(folder, "is a file, not a folder (expected the folder holding MNIST's IDX files)")
    if not folder.is_dir():
        raise DataError(folder, "no such folder (expected MNIST's IDX files)")
    prefix = SPLITS[split]
    images_path = find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3:
        raise DataError(images_path, f"expected (N, rows, cols) images, got shape {images.shape}")
    if len(images) != len(labels):
        raise DataError(labels_path, f"{len(labels)} labels for {len(images)} images in {images_path.name}")
    if labels.size and labels.max() > 9:
        raise DataError(labels_path, f"labels must be digits 0-9, found {int(labels.max())}")
    return images, labels.astype(np.int64)
