"""Chest X-ray files: the real train-only sample, fixtures in Kaggle's layout (grayscale with an RGB image and a
16-bit PNG among them, a corrupt file, an AppleDouble file), patient ids, the patient split (no leak), errors."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from deepfuse.data import DataError
from deepfuse.data.chest_xray import patient_id, patient_split, read_chest_xray
from deepfuse.data.images import BadImageError, BadImagesSkipped
from tests.data.test_images import write_appledouble, write_corrupt, write_image

NORMAL_NAMES = [
    "IM-0115-0001.jpeg",
    "IM-0117-0001.jpeg",
    "NORMAL2-IM-0012-0001.jpeg",
    "NORMAL2-IM-0020-0001.jpeg",
    "IM-0119-0001.jpeg",
    "IM-0122-0001.jpeg",
]
PNEUMONIA_NAMES = [
    "person1_bacteria_1.jpeg",
    "person1_bacteria_2.jpeg",
    "person2_virus_3.jpeg",
    "person3_bacteria_10.jpeg",
    "person3_virus_11.jpeg",
    "person4_bacteria_12.jpeg",
    "person5_virus_13.jpeg",
    "person6_bacteria_14.jpeg",
]


def kaggle_xray_folder(root, with_test=True, with_val=True, nest=True):
    """chest_xray/[chest_xray/]{train,test,val}/{NORMAL,PNEUMONIA}: grayscale JPEGs, one RGB, one 16-bit PNG."""
    base = root / "chest_xray" / "chest_xray" if nest else root
    for i, name in enumerate(NORMAL_NAMES):
        write_image(base / "train" / "NORMAL" / name, "L", (48, 40), seed=i)
    for i, name in enumerate(PNEUMONIA_NAMES):
        write_image(base / "train" / "PNEUMONIA" / name, "RGB" if i == 0 else "L", (52, 40), seed=20 + i)
    write_image(base / "train" / "NORMAL" / "IM-0130-0001.png", "I;16", (48, 40))
    splits = (["test"] if with_test else []) + (["val"] if with_val else [])
    for split in splits:
        write_image(base / split / "NORMAL" / "IM-0001-0001.jpeg", "L", seed=40)
        write_image(base / split / "NORMAL" / "NORMAL2-IM-0300-0001.jpeg", "L", seed=41)
        write_image(base / split / "PNEUMONIA" / "person100_bacteria_475.jpeg", "L", seed=42)
        write_image(base / split / "PNEUMONIA" / "person101_virus_476.jpeg", "L", seed=43)
    return root


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person123_virus_78.jpeg", "person123"),
        ("PERSON0007_bacteria_1.jpeg", "person7"),
        ("IM-0115-0001.jpeg", "IM-115"),
        ("IM-0467-0001-0002.jpeg", "IM-467"),
        ("NORMAL2-IM-0012-0001.jpeg", "IM-12"),
        ("scan_7.jpeg", "scan_7"),
        ("IM-x.jpeg", "IM-x"),
    ],
)
def test_patient_ids(name, patient):
    assert patient_id(Path(name)) == patient


def assert_no_leak(train, val):
    assert not {patient_id(f) for f, _ in train} & {patient_id(f) for f, _ in val}


def test_reads_the_real_train_only_sample(realdata):
    files = read_chest_xray(realdata / "chest_xray")  # the folder above chest_xray/train
    assert files.root == realdata / "chest_xray" / "chest_xray" and files.test is None and files.unused_val == 0
    assert [label for _, label in files.train].count(0) == 6 and len(files.train) == 19
    train, val = patient_split(files.train, 0.2, seed=0)
    assert_no_leak(train, val)
    assert {label for _, label in val} == {0, 1} and len(train) + len(val) == 19
    groups = {patient_id(f) for f, _ in files.train}
    assert len(groups) == 17  # person1 and person67 have two images each


def test_kaggle_fixture_keeps_test_untouched(tmp_path):
    files = read_chest_xray(kaggle_xray_folder(tmp_path))
    assert files.root == tmp_path / "chest_xray" / "chest_xray"
    assert len(files.train) == 15 and files.unused_val == 4
    assert sorted(f.name for f, _ in files.test) == sorted(
        ["IM-0001-0001.jpeg", "NORMAL2-IM-0300-0001.jpeg", "person100_bacteria_475.jpeg", "person101_virus_476.jpeg"]
    )
    assert [label for f, label in files.test if f.name.startswith("person")] == [1, 1]
    train, val = patient_split(files.train, 0.25, seed=0)
    assert_no_leak(train, val)
    assert read_chest_xray(tmp_path / "chest_xray" / "chest_xray").train == files.train  # either level


def test_patient_split_has_no_leak_and_is_seeded():
    rng = np.random.default_rng(0)
    items = []
    for patient in range(300):
        label = int(rng.random() < 0.75)
        prefix = f"person{patient}_bacteria_" if label else f"IM-{patient:04d}-"
        items += [(Path(f"{prefix}{k:04d}.jpeg"), label) for k in range(int(rng.integers(1, 6)))]
    for seed in range(3):
        train, val = patient_split(items, 0.1, seed)
        assert_no_leak(train, val)
        assert len(train) + len(val) == len(items) and set(train) | set(val) == set(items)
        for label in (0, 1):
            share = sum(y == label for _, y in val) / sum(y == label for _, y in items)
            assert 0.1 <= share <= 0.1 + 5 / sum(y == label for _, y in items)  # whole patients: at most one over
    assert patient_split(items, 0.1, 0) == patient_split(items, 0.1, 0)
    assert patient_split(items, 0.1, 0)[1] != patient_split(items, 0.1, 1)[1]


def test_patient_split_needs_two_patients_of_a_class_to_hold_one_out():
    items = [
        (Path("IM-0001-0001.jpeg"), 0),
        (Path("IM-0001-0002.jpeg"), 0),
        (Path("person1_virus_1.jpeg"), 1),
        (Path("person2_virus_2.jpeg"), 1),
    ]
    train, val = patient_split(items, 0.5, seed=0)
    assert [label for _, label in val] == [1] and len(train) == 3
    with pytest.raises(DataError, match="val_fraction"):
        patient_split(items, 0.0, seed=0)


def test_bad_files_stop_unless_skipped(tmp_path):
    root = kaggle_xray_folder(tmp_path, nest=False)
    write_corrupt(root / "train" / "PNEUMONIA" / "person9_virus_20.jpeg")
    write_appledouble(root / "test" / "NORMAL" / "._IM-0001-0001.jpeg")
    with pytest.raises(BadImageError, match=r"person9_virus_20\.jpeg: not a readable image.*1 more"):
        read_chest_xray(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = read_chest_xray(root, skip_bad=True)
    assert len(caught) == 1 and caught[0].category is BadImagesSkipped
    assert str(caught[0].message).startswith("skipped 2 unreadable image files of 21")
    assert len(files.train) == 15 and len(files.test) == 4


def test_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        read_chest_xray(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: has no train/ folder"):
        read_chest_xray(tmp_path / "empty")
    write_image(tmp_path / "half" / "train" / "NORMAL" / "IM-0001-0001.jpeg", "L")
    with pytest.raises(DataError, match=r"half/train: has no PNEUMONIA folder"):
        read_chest_xray(tmp_path / "half")
    (tmp_path / "half" / "train" / "PNEUMONIA").mkdir()
    with pytest.raises(DataError, match=r"train/PNEUMONIA: holds no image files"):
        read_chest_xray(tmp_path / "half")
