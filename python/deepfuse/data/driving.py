"""Udacity self-driving-car simulator logs, as people have them: ``driving_log.csv`` beside an ``IMG/`` folder.

Three flavours are read (real samples in ../shared/realdata/driving, see SOURCES.md §6):
- Udacity's sample: a header ``center,left,right,steering,throttle,brake,speed``, relative ``IMG/...`` paths and
  a space after each comma;
- a user's Windows recording: no header, absolute paths (``C:\\Users\\...\\IMG\\center_...jpg``, resolved by
  their file name in the ``IMG/`` folder beside the CSV), numbers like ``4.770404E-05``;
- an older simulator build: the same without the spaces.

Only images named in a CSV are read, so macOS's ``__MACOSX/._*.jpg`` AppleDouble files are never taken for
images; CSVs under ``__MACOSX`` are skipped too. Images are cropped (sky and bonnet: the top 60 and bottom 25 of
160 rows), resized to 66x200 (PilotNet's input) and converted to YUV, then kept as uint8.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import torch
from torch.utils.data import Dataset

from deepfuse.data.errors import DataError

CAMERAS = ("center", "left", "right")
HEADER = (*CAMERAS, "steering", "throttle", "brake", "speed")
HEIGHT, WIDTH = 66, 200
CROP_TOP, CROP_BOTTOM = 60 / 160, 25 / 160  # shares of the image height cut away
LOG_NAME = "driving_log.csv"


@dataclass(frozen=True)
class Row:
    """One line of a driving log: the three cameras' image files (left/right None when the log has none)."""

    center: Path
    left: Path | None
    right: Path | None
    steering: float
    throttle: float
    brake: float
    speed: float
    source: Path
    line: int


def find_logs(path: str | Path) -> list[Path]:
    """The driving logs a user pointed at: a CSV file, or every ``driving_log.csv`` under a folder (sorted,
    none under ``__MACOSX``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, f"no such file or folder (expected a {LOG_NAME} or a folder holding one)")
    logs = sorted(p for p in path.rglob(LOG_NAME) if "__MACOSX" not in p.parts)
    if not logs:
        raise DataError(path, f"no {LOG_NAME} in this folder or below it (a Udacity recording has one beside IMG/)")
    return logs


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _image_path(field: str, csv_path: Path, line: int) -> Path | None:
    """A path as written in the log, resolved: relative to the CSV's folder, else by file name in its IMG/."""
    field = field.strip()
    if not field:
        return None
    windows = "\\" in field or PureWindowsPath(field).drive
    name = PureWindowsPath(field).name if windows else Path(field).name
    candidates = [] if windows else [csv_path.parent / field]
    candidates.append(csv_path.parent / "IMG" / name)
    if name.startswith("._"):
        raise DataError(csv_path, f"{field!r} is a macOS AppleDouble file, not an image", line)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(csv_path, f"image {field!r} not found (looked for {tried})", line)


def read_log(csv_path: str | Path) -> list[Row]:
    """The rows of one ``driving_log.csv``; a malformed line raises DataError naming the file and line."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(csv_path, f"cannot read the driving log ({error})") from None
    rows = []
    for line, fields in enumerate(csv.reader(text.splitlines(), skipinitialspace=True), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        fields = [f.strip() for f in fields]
        if line == 1 and not _is_number(fields[3] if len(fields) > 3 else ""):
            if [f.lower() for f in fields[:7]] != list(HEADER):
                raise DataError(csv_path, f"unexpected header {fields}; expected {','.join(HEADER)}", line)
            continue
        if len(fields) != 7:
            raise DataError(csv_path, f"expected 7 fields ({','.join(HEADER)}), found {len(fields)}", line)
        numbers = []
        for name, value in zip(HEADER[3:], fields[3:], strict=True):
            try:
                numbers.append(float(value))
            except ValueError:
                raise DataError(csv_path, f"{name} is not a number: {value!r}", line) from None
        if not np.isfinite(numbers).all():
            raise DataError(csv_path, f"non-finite number in {fields[3:]}", line)
        center = _image_path(fields[0], csv_path, line)
        if center is None:
            raise DataError(csv_path, "the center camera's image is missing", line)
        left, right = _image_path(fields[1], csv_path, line), _image_path(fields[2], csv_path, line)
        rows.append(Row(center, left, right, *numbers, source=csv_path, line=line))
    if not rows:
        raise DataError(csv_path, "the driving log holds no rows")
    return rows


def to_yuv(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 → YUV uint8 (BT.601, U and V offset by 128: OpenCV's COLOR_RGB2YUV)."""
    rgb = rgb.astype(np.float32)
    y = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    u = (rgb[..., 2] - y) * 0.492 + 128.0
    v = (rgb[..., 0] - y) * 0.877 + 128.0
    return np.clip(np.rint(np.stack([y, u, v], -1)), 0, 255).astype(np.uint8)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """A camera image (H, W, 3) RGB uint8 → PilotNet's input (66, 200, 3) YUV uint8: crop, resize, convert."""
    from PIL import Image

    height = rgb.shape[0]
    top, bottom = round(CROP_TOP * height), height - round(CROP_BOTTOM * height)
    image = Image.fromarray(np.ascontiguousarray(rgb[top:bottom]))
    return to_yuv(np.asarray(image.resize((WIDTH, HEIGHT), Image.BILINEAR)))


def read_image(path: Path, source: Path | None = None, line: int | None = None) -> np.ndarray:
    """An RGB uint8 image; DataError naming the image (and the log line that named it) when unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        where = f" (named on line {line} of {source})" if source is not None else ""
        raise DataError(path, f"not a readable image{where}: {error}") from None


@dataclass
class Frames:
    """Preprocessed camera images and steering: ``images`` (rows, 3 cameras, 66, 200, 3) YUV uint8 (a missing
    side camera is all zeros, marked False in ``has_side``), ``steering`` (rows,) float32."""

    images: np.ndarray
    steering: np.ndarray
    has_side: np.ndarray

    def __len__(self) -> int:
        return len(self.steering)

    def subset(self, indices) -> Frames:
        return Frames(self.images[indices], self.steering[indices], self.has_side[indices])

    @classmethod
    def concatenate(cls, parts: list[Frames]) -> Frames:
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("images", "steering", "has_side")))


def load_frames(rows: list[Row]) -> Frames:
    """Read and preprocess every row's three images."""
    images = np.zeros((len(rows), len(CAMERAS), HEIGHT, WIDTH, 3), dtype=np.uint8)
    has_side = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        for c, camera in enumerate(CAMERAS):
            path = getattr(row, camera)
            if path is not None:
                images[i, c] = preprocess(read_image(path, row.source, row.line))
        has_side[i] = row.left is not None and row.right is not None
    return Frames(images, np.array([r.steering for r in rows], dtype=np.float32), has_side)


def block_split(count: int, seed: int = 0, shares=(0.8, 0.1, 0.1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row indices of a log of ``count`` consecutive frames, split in blocks of consecutive
    rows (neighbouring frames are near copies: a random row split would leak the test set into training).
    Each split gets at least one block when there are three."""
    block = int(np.clip(count // 20, 1, 50))
    blocks = np.arange(count) // block
    total = int(blocks[-1]) + 1 if count else 0
    order = np.random.default_rng(seed).permutation(total)
    n_val = max(1, int(round(shares[1] * total))) if total >= 3 else 0
    n_test = max(1, int(round(shares[2] * total))) if total >= 3 else 0
    val, test = set(order[:n_val].tolist()), set(order[n_val : n_val + n_test].tolist())
    kind = np.array([1 if b in val else 2 if b in test else 0 for b in blocks.tolist()], dtype=np.int64)
    return tuple(np.flatnonzero(kind == k) for k in range(3))


class SteeringDataset(Dataset):
    """Items ``(image (3, 66, 200) float32 in [-1, 1], steering (1,) float32)``.

    ``augment``: every row gives the center image, the left image with steering + ``correction`` and the right
    one with steering - ``correction`` (rows that have side cameras), and each of those mirrored with the
    steering negated. Otherwise the center images only, as the car sees the road when it drives itself.
    Steering is clipped to [-1, 1].
    """

    def __init__(self, frames: Frames, augment: bool, correction: float = 0.2, flip: bool = True,
                 side_cameras: bool = True) -> None:  # fmt: skip
        self.frames = frames
        rows = np.arange(len(frames))
        items = [(rows, np.zeros_like(rows), frames.steering)]
        if augment and side_cameras:
            sided = rows[frames.has_side]
            items.append((sided, np.ones_like(sided), frames.steering[sided] + correction))
            items.append((sided, np.full_like(sided, 2), frames.steering[sided] - correction))
        row, camera, steering = (np.concatenate(parts) for parts in zip(*items, strict=True))
        mirrored = np.zeros(len(row), dtype=bool)
        if augment and flip:
            row, camera = np.concatenate([row, row]), np.concatenate([camera, camera])
            steering = np.concatenate([steering, -steering])
            mirrored = np.concatenate([mirrored, np.ones_like(mirrored)])
        self.row, self.camera, self.mirrored = row, camera, mirrored
        self.steering = np.clip(steering, -1.0, 1.0).astype(np.float32)

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, index: int):
        image = self.frames.images[self.row[index], self.camera[index]]
        if self.mirrored[index]:
            image = image[:, ::-1]
        return to_tensor(image), torch.tensor([self.steering[index]])


def to_tensor(yuv: np.ndarray) -> torch.Tensor:
    """(..., 66, 200, 3) YUV uint8 → (..., 3, 66, 200) float32 in [-1, 1] (PilotNet's normalisation layer)."""
    x = torch.from_numpy(np.ascontiguousarray(yuv)).float()
    return (x / 127.5 - 1.0).movedim(-1, -3).contiguous()
