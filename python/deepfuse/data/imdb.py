"""The Large Movie Review Dataset (IMDb, Maas et al. 2011) in its published layout.

``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``: one review per file, the label from the folder (neg 0,
pos 1), the rating (1-4 negative, 7-10 positive) from the file name. ``train/unsup/``, the ``*.feat`` bag-of-words
files, ``urls_*.txt`` and ``imdb.vocab`` are not read.

Each file is read as ONE UTF-8 document: bytes, then decode — never split into lines, because some reviews hold
C1 control characters (cp1252 bytes decoded as Latin-1 before the dataset was written: U+0096 for an en dash,
U+0085 for an ellipsis), and ``str.splitlines`` counts U+0085 as a line break. Those C1 characters are mapped
back to what cp1252 meant (U+0085 → "…", U+0096 → "–"; the five code points cp1252 leaves undefined → a space),
and the ``<br />`` tags in the text become spaces.

A review that is empty or only white space (after the cleaning above) holds nothing to learn from: it is skipped,
and one warning (``EmptyReviewsSkipped``) says how many and which file first, so the counts never silently differ
from the layout's.

The validation split is carved from train (a seeded permutation, the same for every run); the test split stays
untouched. IMDb's test reviews are of other movies than train's; a random carve puts reviews of one movie on both
sides of train/validation, so validation accuracy can read a little higher than test.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepfuse.data.errors import DataError

LABELS = ("negative", "positive")
FOLDERS = {"neg": 0, "pos": 1}
_NAME = re.compile(r"(\d+)_(\d+)\.txt")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def _c1_table() -> dict[int, str]:
    table = {}
    for code in range(0x80, 0xA0):
        try:
            table[code] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            table[code] = " "
    return table


_C1 = _c1_table()


class EmptyReviewsSkipped(UserWarning):
    """Review files holding only white space were left out."""


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 0 negative, 1 positive
    rating: int  # 1-10, from the file name
    path: Path


def clean(text: str) -> str:
    """``<br />`` tags → spaces; C1 control characters → the cp1252 characters they stand for."""
    return _BREAK.sub(" ", text).translate(_C1)


def read_review(path: str | Path) -> str:
    """One review file as one cleaned document."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(path, f"cannot read ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start})") from None
    return clean(text)


def find_root(path: str | Path) -> Path:
    """The folder holding ``train/`` and ``test/``: ``path`` itself or ``path/aclImdb``."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such folder (expected IMDb's aclImdb folder, or the folder holding it)")
    for candidate in (path, path / "aclImdb"):
        if (candidate / "train").is_dir():
            return candidate
    raise DataError(path, "not IMDb's layout: expected aclImdb/train/{pos,neg}/<id>_<rating>.txt and aclImdb/test/...")


def load_split(root: str | Path, split: str, progress: bool = False) -> list[Review]:
    """Every review of ``split`` ("train" or "test"): negatives then positives, each in the order of their ids;
    empty reviews skipped with one warning. ``progress``: a progress bar on stderr (25,000 files take seconds)."""
    from tqdm.auto import tqdm

    folder = Path(root) / split
    listed = []
    for name, label in FOLDERS.items():
        sub = folder / name
        if not sub.is_dir():
            raise DataError(sub, f"missing (IMDb's layout has {split}/neg and {split}/pos)")
        files = []
        for path in sub.iterdir():
            if path.name.startswith(".") or path.suffix != ".txt":
                continue  # .DS_Store, editor backups ...
            match = _NAME.fullmatch(path.name)
            if match is None:
                raise DataError(path, "file name is not <id>_<rating>.txt")
            rating = int(match.group(2))
            if not 1 <= rating <= 10:
                raise DataError(path, f"rating {rating} in the file name is outside 1-10")
            files.append((int(match.group(1)), rating, path))
        if not files:
            raise DataError(sub, "holds no <id>_<rating>.txt review files")
        listed += [(label, rating, path) for _, rating, path in sorted(files)]
    reviews, empty = [], []
    bar = tqdm(
        listed,
        desc=f"reading {split} reviews",
        unit=" files",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not progress,
    )
    for label, rating, path in bar:
        text = read_review(path)
        if text.strip():
            reviews.append(Review(text, label, rating, path))
        else:
            empty.append(path)
    if empty:
        warnings.warn(
            f"{folder}: skipped {len(empty)} empty review{'s' if len(empty) > 1 else ''} (only white "
            f"space; first: {empty[0]})",
            EmptyReviewsSkipped,
            stacklevel=2,
        )
    return reviews


def carve_validation(reviews: list[Review], fraction: float = 0.1, seed: int = 0) -> tuple[list[Review], list[Review]]:
    """(train, validation): a seeded random ``fraction`` of ``reviews`` (at least one) for validation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(reviews))
    count = max(1, round(len(reviews) * fraction))
    val, train = sorted(order[:count]), sorted(order[count:])
    return [reviews[i] for i in train], [reviews[i] for i in val]
