"""Image files for the image classifiers: listing, checking, Pillow decoding, channel conversion, resize,
normalisation and training augmentation. Knows no model and no dataset layout (see catsdogs.py, chest_xray.py).

Every image becomes a float32 tensor (C, H, W), C = 1 (grayscale) or 3 (RGB), of side ``size``, normalised
with a per-channel mean and std. Decoding runs in the DataLoader's worker processes (Pillow only: torchvision's
PyPI wheel does not import beside a CPU build of torch).

Bad files. The public copies of these datasets hold files that are not images (macOS archives add
``__MACOSX/._*.jpg`` AppleDouble files) and may hold broken ones. ``check_images`` is run by the loaders on
every file up front, so that a bad file stops a run before the first step, naming the file:

- by default it reads each file's header (``Image.open`` + ``verify``: 0.03-0.4 ms a file on the real samples,
  a few seconds for 25,000 files). That catches non-images, AppleDouble files, empty and garbled files. A
  file whose header is fine but whose compressed data is cut short is only found when it is decoded: then
  ``BadImageError`` names it, from the main process or from a DataLoader worker alike.
- with ``skip_bad`` every file is decoded once (JPEG at reduced scale: 1-4 ms a file), so that every bad file
  is dropped before training, and the count is reported in one warning line.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfuse.data.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class BadImageError(DataError):
    """A file that is not a readable image. Survives a DataLoader worker: torch re-raises a worker's error as
    ``type(error)(formatted traceback)``; this class then keeps the original one-line message."""

    def __init__(self, path: str | Path | None, problem: str | None = None) -> None:
        if problem is not None:
            super().__init__(path, problem)
            return
        # re-raised by torch.utils.data from a worker: the text is "Caught ... in DataLoader worker process N.
        # \nOriginal Traceback ...\n<module>.BadImageError: <path>: <problem>"
        lines = [line for line in str(path).splitlines() if line.strip()]
        message = lines[-1].split("BadImageError: ", 1)[-1] if lines else str(path)
        worker = re.search(r"in DataLoader worker process \d+", lines[0]) if lines else None
        ValueError.__init__(self, message + (f" ({worker.group(0)})" if worker else ""))
        self.path, self.line = None, None


class BadImagesSkipped(UserWarning):
    """Unreadable image files were skipped (skip_bad)."""


def image_files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` whose suffix is an image's (any case), sorted. Files with other suffixes
    (``.DS_Store``, ``Thumbs.db``, notes) are not images and are not listed; a file with an image suffix that is
    not an image (an AppleDouble ``._x.jpg``) is listed, and ``check_images`` reports it."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def natural_key(path: Path):
    """Sort key: numbers in names by value (Kaggle's test1/2.jpg before 10.jpg)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def input_images(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files a user names: files as given, folders by their images in natural order (``image_files``).
    A missing path or a folder without images is a DataError."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(image_files(path), key=natural_key)
            if not found:
                raise DataError(path, "holds no image files (.jpg, .jpeg, .png ...)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(path, "no such file or folder (expected image files or folders of them)")
    return files


def _describe(error: BaseException, path: Path | str) -> str:
    text = " ".join(str(error).replace(f" '{path}'", "").split()) or type(error).__name__
    return f"{type(error).__name__}: {text}" if type(error).__name__ not in text else text


def image_problem(path: Path, decode: bool = False) -> str | None:
    """None when ``path`` reads as an image, else what is wrong (one line). ``decode``: decode it as training
    will (at reduced scale for JPEG, orientation, channel conversion) instead of reading the header only."""
    from PIL import Image

    if path.name.startswith("._"):
        return "an AppleDouble file (macOS archive metadata, not an image); delete it or the __MACOSX folder"
    try:
        if decode:
            _decode(path, 1, 1)
        else:
            with Image.open(path) as image:
                image.verify()
    except Exception as error:  # any failure of Pillow on a user's file means: not a readable image
        return f"not a readable image ({_describe(error, path)})"
    return None


def check_images(paths: Sequence[Path], skip_bad: bool = False, decode: bool | None = None) -> list[Path]:
    """The readable files of ``paths``, in order. A bad file raises ``BadImageError`` naming the first one and
    counting the others; with ``skip_bad`` the bad ones are dropped and counted in one warning line.
    ``decode`` (default: ``skip_bad``) decodes every file instead of reading headers (see the module doc)."""
    decode = skip_bad if decode is None else decode
    workers = min(8, os.cpu_count() or 1, max(1, len(paths) // 64))
    if workers > 1:  # Pillow's decoders and file reads release the GIL
        with ThreadPoolExecutor(workers) as pool:
            problems = list(pool.map(lambda p: image_problem(p, decode), paths))
    else:
        problems = [image_problem(p, decode) for p in paths]
    bad = [(p, problem) for p, problem in zip(paths, problems, strict=True) if problem is not None]
    if bad and not skip_bad:
        others = f"; {len(bad) - 1} more unreadable image files" if len(bad) > 1 else ""
        raise BadImageError(bad[0][0], f"{bad[0][1]}{others} (skip_bad / --skip-bad skips them)")
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable image file{'s' if len(bad) > 1 else ''} of {len(paths)} "
            f"(first: {bad[0][0]}: {bad[0][1]})",
            BadImagesSkipped,
            stacklevel=2,
        )
    return [p for p, problem in zip(paths, problems, strict=True) if problem is None]


# --- decoding -----------------------------------------------------------------------------------------------
def load_image(path: str | Path, channels: int, size: int | None = None):
    """A Pillow image of mode "L" (channels 1) or "RGB" (channels 3), EXIF orientation applied. ``size``: the
    smallest side wanted — JPEGs are then decoded at the coarsest 1/2, 1/4, 1/8 scale still at least that big.
    Any failure is a ``BadImageError`` naming the file (a header that passed the check, data that does not)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        return _decode(path, channels, size)
    except Exception as error:
        raise BadImageError(path, f"not a readable image ({_describe(error, path)})") from None


def _decode(path: str | Path, channels: int, size: int | None):
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if size:
            image.draft("L" if channels == 1 else None, (size, size))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_channels(image, channels)


def to_channels(image, channels: int):
    """``image`` (any Pillow mode) as "L" or "RGB". Transparent pixels are composited over white; palette
    images through their palette; CMYK, YCbCr, LAB, HSV by Pillow's conversion; 16-bit grayscale is scaled by
    the range its values fit (8, 12 or 16 bits)."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 255.0 if array.max() <= 255 else 4095.0 if array.max() <= 4095 else 65535.0
        image = Image.fromarray(np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in image.info or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


# --- transforms ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Training augmentation: a random resized crop (``scale``: fraction of the area, ``ratio``: aspect),
    a horizontal flip with probability ``flip``, a rotation uniform in ±``rotate`` degrees (first)."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5
    rotate: float = 0.0


def random_resized_crop_box(width: int, height: int, scale, ratio) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop of random area and aspect (torchvision's rule: 10 tries, then the
    centre crop of the aspect nearest the image's). Random numbers from torch (seeded per DataLoader worker)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(()).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(()).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, ()).item())
            left = int(torch.randint(0, width - w + 1, ()).item())
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclass(frozen=True)
class ImageTransform:
    """path → normalised float32 tensor (channels, size, size). Without ``augment`` (evaluation, prediction)
    the whole image is resized to size x size (nothing cropped away; thin images are stretched). With it, the
    augmentation above. Picklable, so DataLoader workers can run it."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment | None = None

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"image size must be >= 1, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each, got {self.mean} and {self.std}")

    def __call__(self, path: str | Path) -> torch.Tensor:
        from PIL import Image

        augment = self.augment
        # decode at a scale that still leaves the smallest crop `size` pixels across
        wanted = self.size if augment is None else math.ceil(self.size / math.sqrt(augment.scale[0]))
        image = load_image(path, self.channels, wanted)
        if augment is None:
            image = image.resize((self.size, self.size), Image.BILINEAR)
        else:
            if augment.rotate:
                angle = (2 * torch.rand(()).item() - 1) * augment.rotate
                image = image.rotate(angle, Image.BILINEAR)
            box = random_resized_crop_box(*image.size, augment.scale, augment.ratio)
            image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
            if torch.rand(()).item() < augment.flip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return normalise(np.asarray(image), self.mean, self.std)


def normalise(array: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) → float32 (C, H, W), (x / 255 - mean) / std per channel."""
    x = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)) / 255.0
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((x - mean_t) / std_t).contiguous()


class ImageDataset(Dataset):
    """Items ``(image tensor, label)``; label -1 for unlabelled files. Decodes in ``__getitem__`` (workers)."""

    def __init__(self, files: Iterable[Path], labels: Sequence[int] | None, transform: ImageTransform) -> None:
        self.files = [str(f) for f in files]
        self.labels = [-1] * len(self.files) if labels is None else [int(v) for v in labels]
        if len(self.labels) != len(self.files):
            raise ValueError(f"{len(self.files)} files but {len(self.labels)} labels")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        return self.transform(self.files[index]), torch.tensor(self.labels[index], dtype=torch.long)


__all__ = [
    "Augment",
    "BadImageError",
    "BadImagesSkipped",
    "ImageDataset",
    "ImageTransform",
    "check_images",
    "image_files",
    "image_problem",
    "input_images",
    "load_image",
    "natural_key",
    "normalise",
    "random_resized_crop_box",
    "to_channels",
]
