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

Keyboard recordings (steering mostly exact zeros with spikes: ``looks_like_keystrokes``) are what most public
logs are. What practitioners do with them is here: labels smoothed in time (``smooth_steering``: a Gaussian over
the frames' time stamps, never across a gap in the recording), most straight frames dropped from training
(``SteeringDataset(straight_keep=...)``) and brightness, horizontal-shift and shadow augmentation (``jitter``).
"""

from __future__ import annotations

import csv
import datetime
import re
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
FRAME_SECONDS = 0.1  # the simulator logs at ~10 Hz: the time step assumed when file names carry no time stamp
GAP_SECONDS = 1.0  # a longer pause between two frames starts a new stretch of driving (never smoothed across)
STRAIGHT = 0.01  # |steering| below this is driving straight
# Keystroke-like labels: more than half exact zeros and few distinct values (a keyboard gives a handful of
# levels; an analogue stick or a wheel gives nearly one per frame).
KEYSTROKE_ZEROS, KEYSTROKE_DISTINCT = 0.5, 0.1
# Horizontal shift: a shift of the 200-pixel-wide input by one pixel is a yaw of the camera by ~0.3° (a 60° field
# of view over 200 pixels); the simulator's pure-pursuit expert (7.2 m look-ahead at 8 m/s) answers a heading
# error e with about 1.65 e of steering, so 0.3° (0.0052 rad) per pixel -> 0.0086 steering per pixel.
SHIFT_STEERING_PER_PIXEL = 0.0086
_STAMP = re.compile(r"(\d{4})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{2})_(\d{3})")


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
    side camera is all zeros, marked False in ``has_side``), ``steering`` (rows,) float32: the labels trained on
    (smoothed or not), ``recorded`` (rows,) float32: the steering as the log has it."""

    images: np.ndarray
    steering: np.ndarray
    has_side: np.ndarray
    recorded: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.recorded is None:
            self.recorded = self.steering.copy()

    def __len__(self) -> int:
        return len(self.steering)

    def subset(self, indices) -> Frames:
        return Frames(self.images[indices], self.steering[indices], self.has_side[indices], self.recorded[indices])

    @classmethod
    def concatenate(cls, parts: list[Frames]) -> Frames:
        keys = ("images", "steering", "has_side", "recorded")
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in keys))


def frame_times(rows: list[Row]) -> np.ndarray:
    """Seconds since the first frame, from the time stamps in the image names (``center_2016_12_01_13_30_48_287``);
    ``FRAME_SECONDS`` apart when a name carries none."""
    stamps = []
    for row in rows:
        match = _STAMP.search(row.center.name)
        if match is None:
            return np.arange(len(rows)) * FRAME_SECONDS
        year, month, day, hour, minute, second, milli = (int(g) for g in match.groups())
        try:
            moment = datetime.datetime(year, month, day, hour, minute, second, milli * 1000)
        except ValueError:
            return np.arange(len(rows)) * FRAME_SECONDS
        stamps.append((moment - datetime.datetime(1970, 1, 1)).total_seconds())  # naive: no time zone, no DST
    return np.asarray(stamps) - stamps[0]


def looks_like_keystrokes(steering: np.ndarray) -> tuple[bool, str]:
    """Whether labels look like a keyboard's (> 50 % exact zeros, distinct values < 10 % of the frames or <= 20),
    and the numbers that say so."""
    steering = np.asarray(steering)
    zeros = float((steering == 0).mean()) if len(steering) else 0.0
    distinct = len(np.unique(steering))
    keyboard = zeros > KEYSTROKE_ZEROS and distinct <= max(20, KEYSTROKE_DISTINCT * len(steering))
    return keyboard, f"{zeros:.0%} exact zeros, {distinct} distinct values"


def smooth_steering(steering: np.ndarray, times: np.ndarray, sigma: float) -> np.ndarray:
    """Steering smoothed in time: a Gaussian of ``sigma`` seconds over the frames' ``times``, within stretches
    of the recording without a pause longer than ``GAP_SECONDS`` (or a step back in time)."""
    steering, times = np.asarray(steering, dtype=np.float64), np.asarray(times, dtype=np.float64)
    if sigma <= 0 or len(steering) < 2:
        return steering.astype(np.float32)
    breaks = np.flatnonzero((np.diff(times) > GAP_SECONDS) | (np.diff(times) < 0)) + 1
    out = np.empty_like(steering)
    for part in np.split(np.arange(len(steering)), breaks):
        t = times[part]
        weights = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma) ** 2)
        weights[np.abs(t[:, None] - t[None, :]) > 4 * sigma] = 0.0
        out[part] = weights @ steering[part] / weights.sum(1)
    return out.astype(np.float32)


def jitter(image: np.ndarray, steering: float, rng: np.random.Generator, max_shift: int = 20):
    """Random photometric and geometric changes of one (66, 200, 3) YUV uint8 image, as practitioners augment
    driving logs: brightness (Y scaled by 0.5-1.3), a horizontal shift of up to ``max_shift`` pixels with the
    steering corrected by ``SHIFT_STEERING_PER_PIXEL`` each (edge columns repeated), and the shadow of a straight
    edge across the image (Y scaled by 0.5-0.85 on one side). Returns (image, steering)."""
    y = image[..., 0].astype(np.float32) * rng.uniform(0.5, 1.3)
    height, width = y.shape
    columns = np.arange(width)
    top, bottom = rng.uniform(0, width, 2)  # the shadow's edge, from the top row to the bottom row
    edge = top + (bottom - top) * (np.arange(height)[:, None] / max(height - 1, 1))
    shaded = (columns[None, :] < edge) if rng.random() < 0.5 else (columns[None, :] >= edge)
    y = np.where(shaded, y * rng.uniform(0.5, 0.85), y)
    out = np.concatenate([np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None], image[..., 1:]], -1)
    shift = int(rng.integers(-max_shift, max_shift + 1)) if max_shift > 0 else 0
    out = out[:, np.clip(columns - shift, 0, width - 1)]  # > 0: the road moves right, as when the car yaws left
    return out, steering + shift * SHIFT_STEERING_PER_PIXEL


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
    steering negated; ``straight_keep`` of the straight rows (|steering| < ``STRAIGHT``) are kept (drawn with
    ``seed``); ``jitter_images``: each item is changed at random by ``jitter`` (numpy's global generator is not
    used: a generator per item from torch's, so DataLoader workers and resumed runs draw as torch does).
    Otherwise the center images only, as the car sees the road when it drives itself.
    Steering is clipped to [-1, 1].
    """

    def __init__(
        self,
        frames: Frames,
        augment: bool,
        correction: float = 0.2,
        flip: bool = True,
        side_cameras: bool = True,
        straight_keep: float = 1.0,
        jitter_images: bool = False,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= straight_keep <= 1.0:
            raise ValueError(f"straight_keep must be in [0, 1], got {straight_keep}")
        self.frames = frames
        rows = np.arange(len(frames))
        if augment and straight_keep < 1.0:
            straight = np.abs(frames.steering) < STRAIGHT
            drop = straight & (np.random.default_rng(seed).random(len(frames)) >= straight_keep)
            rows = rows[~drop]
        self.rows = rows
        items = [(rows, np.zeros_like(rows), frames.steering[rows])]
        if augment and side_cameras:
            sided = rows[frames.has_side[rows]]
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
        self.jitter_images = augment and jitter_images

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, index: int):
        image, steering = self.frames.images[self.row[index], self.camera[index]], float(self.steering[index])
        if self.mirrored[index]:
            image = image[:, ::-1]
        if self.jitter_images:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            image, steering = jitter(image, steering, rng)
            steering = min(max(steering, -1.0), 1.0)
        return to_tensor(image), torch.tensor([steering], dtype=torch.float32)


def to_tensor(yuv: np.ndarray) -> torch.Tensor:
    """(..., 66, 200, 3) YUV uint8 → (..., 3, 66, 200) float32 in [-1, 1] (PilotNet's normalisation layer)."""
    x = torch.from_numpy(np.ascontiguousarray(yuv)).float()
    return (x / 127.5 - 1.0).movedim(-1, -3).contiguous()
