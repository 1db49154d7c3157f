"""Dogs vs. Cats: the image files and their labels (0 cat, 1 dog), in the layouts the dataset is published in.

- Kaggle's: ``train/cat.0.jpg``, ``train/dog.0.jpg`` ... (the label is in the file name) and ``test1/1.jpg`` ...
  (unlabelled: predict them for a submission). ``--data`` may also name the ``train`` folder.
- One folder per class: ``cats/`` and ``dogs/`` (``cat``/``dog`` and any case also do), directly or under
  ``train/``; then ``val/`` (or ``valid/``, ``validation/``) and ``test/`` with the same class folders are the
  validation and test splits when present.

Images are checked up front (deepfuse.data.images.check_images). Nothing is decoded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepfuse.data.errors import DataError
from deepfuse.data.images import check_images, image_files

CLASSES = ("cat", "dog")
CLASS_FOLDERS = {"cat": 0, "cats": 0, "dog": 1, "dogs": 1}
KAGGLE_NAME = re.compile(r"^(cat|dog)\.\d+\.[a-z]+$", re.IGNORECASE)
VAL_FOLDERS = ("val", "valid", "validation")
EXPECTED = (
    "expected Kaggle's layout (train/cat.0.jpg, train/dog.0.jpg ..., optionally test1/) or one folder "
    "per class (cats/ and dogs/, directly or under train/)"
)

Items = list[tuple[Path, int]]


@dataclass
class CatsDogsFiles:
    """Labelled files per split (``val``/``test`` None when the layout has none) and Kaggle's unlabelled test1."""

    layout: str
    train: Items
    val: Items | None = None
    test: Items | None = None
    test1: Path | None = None  # the unlabelled folder, not read at training time
    notes: list[str] = field(default_factory=list)


def _class_folders(folder: Path) -> dict[int, Path]:
    found = {}
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        label = CLASS_FOLDERS.get(child.name.lower())
        if label is not None and child.is_dir():
            if label in found:
                raise DataError(child, f"a second {CLASSES[label]} folder beside {found[label].name}/")
            found[label] = child
    return found


def _per_class(folder: Path, folders: dict[int, Path]) -> Items:
    if set(folders) != {0, 1}:
        have = CLASSES[next(iter(folders))]
        raise DataError(folder, f"has a {have}s folder but no {CLASSES[1 - next(iter(folders))]}s folder")
    items = []
    for label, sub in sorted(folders.items()):
        files = image_files(sub)
        if not files:
            raise DataError(sub, "holds no image files (.jpg, .jpeg, .png ...)")
        items += [(f, label) for f in files]
    return items


def _kaggle_named(folder: Path) -> list[Path]:
    return [f for f in image_files(folder) if KAGGLE_NAME.match(f.name)] if folder.is_dir() else []


def _check_both_named(folder: Path, named: list[Path]) -> None:
    """Kaggle's layout names both classes' files, as the folder layout has both class folders."""
    found = {KAGGLE_NAME.match(f.name).group(1).lower() for f in named}
    if len(found) < 2:
        (have,) = found
        other = CLASSES[1 - CLASSES.index(have)]
        raise DataError(
            folder,
            f"has {have}.N images but no {other}.N images (Kaggle's layout; a classifier of cats and dogs needs both)",
        )


def find_files(path: Path) -> CatsDogsFiles:
    """The layout under ``path`` and its files (not yet checked). DataError when it is none of the layouts."""
    if not path.exists():
        raise DataError(path, f"no such folder ({EXPECTED})")
    if not path.is_dir():
        raise DataError(path, f"is a file, not a folder ({EXPECTED})")
    if folders := _class_folders(path):
        return CatsDogsFiles("one folder per class", _per_class(path, folders))
    train = path / "train"
    if folders := _class_folders(train):
        files = CatsDogsFiles("one folder per class under train/", _per_class(train, folders))
        for name in VAL_FOLDERS:
            if folders := _class_folders(path / name):
                files.val = _per_class(path / name, folders)
                files.notes.append(f"validation from {name}/")
                break
        if folders := _class_folders(path / "test"):
            files.test = _per_class(path / "test", folders)
        return files
    for folder, test1 in ((train, path / "test1"), (path, None)):
        if named := _kaggle_named(folder):
            _check_both_named(folder, named)
            files = image_files(folder)
            found = CatsDogsFiles("Kaggle (label from the file name)", [(f, -1) for f in files])
            if test1 is not None and test1.is_dir():
                found.test1 = test1
            return found
    raise DataError(path, f"found no cat or dog images ({EXPECTED})")


def _labelled(files: list[Path]) -> Items:
    items = []
    for f in files:
        match = KAGGLE_NAME.match(f.name)
        if match is None:
            raise DataError(f, "cannot tell cat from dog: Kaggle's train/ names its files cat.N.jpg or dog.N.jpg")
        items.append((f, CLASSES.index(match.group(1).lower())))
    return items


def read_catsdogs(path: Path, skip_bad: bool = False) -> CatsDogsFiles:
    """The labelled splits under ``path`` with every file checked (one check, one warning for all splits)."""
    files = find_files(path)
    splits = {name: getattr(files, name) for name in ("train", "val", "test") if getattr(files, name) is not None}
    everything = [f for items in splits.values() for f, _ in items]
    readable = set(check_images(everything, skip_bad))
    for name, items in splits.items():
        kept = [(f, label) for f, label in items if f in readable]
        if not kept:
            raise DataError(path / name if name != "train" else path, f"no readable images in the {name} split")
        if any(label < 0 for _, label in kept):
            kept = _labelled([f for f, _ in kept])
        if name == "train" and len({label for _, label in kept}) < 2:
            (left,) = {CLASSES[label] for _, label in kept}
            raise DataError(
                path,
                f"no readable {CLASSES[1 - CLASSES.index(left)]} image is left in the train "
                f"split (only {left}s): a classifier needs both classes",
            )
        setattr(files, name, kept)
    return files


def split_off(items: Items, fraction: float, seed: int) -> tuple[Items, Items]:
    """(train, val): a seeded, per-class ``fraction`` of the items for validation (>= 1 of each class that has
    two or more)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(None, f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({label for _, label in items}):
        members = [item for item in items if item[1] == label]
        order = rng.permutation(len(members))
        count = max(1, round(fraction * len(members))) if len(members) >= 2 else 0
        val += [members[i] for i in sorted(order[:count])]
        train += [members[i] for i in sorted(order[count:])]
    return train, val


__all__ = ["CLASSES", "CatsDogsFiles", "find_files", "read_catsdogs", "split_off"]
