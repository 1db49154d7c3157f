"""Chest X-Ray Images (Pneumonia), Kaggle's layout: ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``.

Labels: 0 NORMAL, 1 PNEUMONIA (the folder). ``--data`` may name the folder holding ``train/`` or one above it
(the Kaggle archive nests ``chest_xray/chest_xray/``). The published ``val/`` (16 images) is too small to choose
a model or a threshold and is not used: validation is carved from ``train/`` by patient (``patient_id``) so that
no patient has images on both sides. ``test/`` stays untouched; a copy with ``train/`` only (like the real
sample here) has no test split, and the final evaluation is then on the validation split.

Images are checked up front (deepfuse.data.images.check_images). Nothing is decoded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepfuse.data.errors import DataError
from deepfuse.data.images import check_images, image_files

CLASSES = ("NORMAL", "PNEUMONIA")
EXPECTED = "expected Kaggle's layout chest_xray/train/{NORMAL,PNEUMONIA}/*.jpeg (and test/ likewise)"

Items = list[tuple[Path, int]]

# Patient ids from Kaggle's file names (the dataset documents no other key):
#   person<P>_bacteria_<I>.jpeg, person<P>_virus_<I>.jpeg  -> "person<P>" (I numbers the images; one patient
#                                                              can have both bacteria and virus images)
#   IM-<P>-<S>.jpeg, IM-<P>-<S>-<K>.jpeg                    -> "IM-<P>"     (S, K number a patient's images)
#   NORMAL2-IM-<P>-<S>.jpeg                                 -> "IM-<P>" as well: whether the second batch
#                                                              restarts the numbering is not documented, so
#                                                              both are grouped together (never a leak)
#   anything else                                            -> the file name itself (one image, one patient)
_PATIENT_RULES = (
    (re.compile(r"^person(\d+)_", re.IGNORECASE), "person"),
    (re.compile(r"^(?:NORMAL2-)?IM-(\d+)", re.IGNORECASE), "IM-"),
)


def patient_id(path: Path) -> str:
    """The patient a file belongs to (rules above); numbers compared by value (IM-0115 is IM-115)."""
    for pattern, prefix in _PATIENT_RULES:
        match = pattern.match(path.name)
        if match:
            return f"{prefix}{int(match.group(1))}"
    return path.stem


@dataclass
class ChestXrayFiles:
    root: Path
    train: Items
    test: Items | None = None
    unused_val: int = 0  # images in the published val/ (not used)
    notes: list[str] = field(default_factory=list)


def _root(path: Path) -> Path:
    if not path.exists():
        raise DataError(path, f"no such folder ({EXPECTED})")
    if not path.is_dir():
        raise DataError(path, f"is a file, not a folder ({EXPECTED})")
    for candidate in (path, path / "chest_xray", path / "chest_xray" / "chest_xray"):
        if (candidate / "train").is_dir():
            return candidate
    raise DataError(path, f"has no train/ folder ({EXPECTED})")


def _split(folder: Path) -> Items:
    found = {child.name.upper(): child for child in sorted(folder.iterdir()) if child.is_dir()}
    missing = [name for name in CLASSES if name not in found]
    if missing:
        raise DataError(folder, f"has no {' or '.join(missing)} folder ({EXPECTED})")
    items = []
    for label, name in enumerate(CLASSES):
        files = image_files(found[name])
        if not files:
            raise DataError(found[name], "holds no image files (.jpeg, .jpg, .png ...)")
        items += [(f, label) for f in files]
    return items


def read_chest_xray(path: Path, skip_bad: bool = False) -> ChestXrayFiles:
    """train and (when present) test, every file checked (one check, one warning for both splits)."""
    root = _root(path)
    files = ChestXrayFiles(root, _split(root / "train"))
    if (root / "test").is_dir():
        files.test = _split(root / "test")
    if (root / "val").is_dir():
        files.unused_val = sum(len(image_files(c)) for c in (root / "val").iterdir() if c.is_dir())
    everything = [f for items in (files.train, files.test or []) for f, _ in items]
    readable = set(check_images(everything, skip_bad))
    for name in ("train", "test"):
        items = getattr(files, name)
        if items is None:
            continue
        kept = [(f, label) for f, label in items if f in readable]
        if not kept:
            raise DataError(root / name, f"no readable images in the {name} split")
        setattr(files, name, kept)
    return files


def patient_split(items: Items, fraction: float, seed: int) -> tuple[Items, Items]:
    """(train, val) with whole patients on each side: per class, patients in a seeded order go to validation
    until it holds ``fraction`` of that class's images (at least one patient of each class that has two or
    more). A patient's class is that of the majority of their images."""
    if not 0.0 < fraction < 1.0:
        raise DataError(None, f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    patients: dict[str, list[int]] = {}
    for index, (f, _) in enumerate(items):
        patients.setdefault(patient_id(f), []).append(index)
    by_class: dict[int, list[str]] = {}
    for pid in sorted(patients):
        labels = [items[i][1] for i in patients[pid]]
        by_class.setdefault(max(set(labels), key=labels.count), []).append(pid)
    rng = np.random.default_rng(seed)
    val_indices: set[int] = set()
    for label in sorted(by_class):
        pids = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        if len(pids) < 2:
            continue
        wanted = fraction * sum(len(patients[p]) for p in pids)
        taken = 0
        for pid in pids[:-1]:  # never every patient of a class
            if taken >= wanted and taken > 0:
                break
            val_indices.update(patients[pid])
            taken += len(patients[pid])
    train = [item for i, item in enumerate(items) if i not in val_indices]
    val = [item for i, item in enumerate(items) if i in val_indices]
    return train, val


__all__ = ["CLASSES", "ChestXrayFiles", "patient_id", "patient_split", "read_chest_xray"]
