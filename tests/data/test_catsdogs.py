"""Dogs vs. Cats files: the real Kaggle sample, fixtures in every accepted layout (with a grayscale, a CMYK and
a palette image among the RGB ones, a corrupt file, an AppleDouble file), the validation split, errors."""

import warnings

import pytest

from deepfuse.data import DataError
from deepfuse.data.catsdogs import find_files, read_catsdogs, split_off
from deepfuse.data.images import BadImageError, BadImagesSkipped, input_images
from tests.data.test_images import write_appledouble, write_corrupt, write_image


def kaggle_folder(root, per_class=4, extras=True):
    """Kaggle's layout: train/cat.N.jpg, train/dog.N.jpg (one grayscale, one CMYK, one palette PNG) + test1/."""
    for label in ("cat", "dog"):
        for n in range(per_class):
            write_image(root / "train" / f"{label}.{n}.jpg", seed=n + (100 if label == "dog" else 0))
    if extras:
        write_image(root / "train" / "cat.90.jpg", "L")
        write_image(root / "train" / "dog.91.jpg", "CMYK")
        write_image(root / "train" / "dog.92.png", "P")
    for n in (1, 2, 10):
        write_image(root / "test1" / f"{n}.jpg", seed=50 + n)
    return root


def class_folders(root, names=("cats", "dogs"), per_class=3):
    for label, name in enumerate(names):
        for n in range(per_class):
            write_image(root / name / f"{n}.jpg", "L" if n == 0 else "RGB", seed=10 * label + n)
    return root


def test_reads_the_real_kaggle_sample(realdata):
    files = read_catsdogs(realdata / "catsdogs")
    assert files.layout.startswith("Kaggle") and len(files.train) == 46 and files.test1 is None
    assert all(label == (0 if f.name.startswith("cat.") else 1) for f, label in files.train)
    assert sum(label for _, label in files.train) == 23
    assert read_catsdogs(realdata / "catsdogs" / "train").train == files.train  # --data may name train/ itself


def test_kaggle_fixture_with_odd_modes(tmp_path):
    files = read_catsdogs(kaggle_folder(tmp_path))
    names = {f.name: label for f, label in files.train}
    assert names["cat.90.jpg"] == 0 and names["dog.91.jpg"] == 1 and names["dog.92.png"] == 1 and len(names) == 11
    assert [f.name for f in input_images([files.test1])] == ["1.jpg", "2.jpg", "10.jpg"]


def test_corrupt_and_appledouble_files_stop_unless_skipped(tmp_path):
    root = kaggle_folder(tmp_path)
    write_corrupt(root / "train" / "dog.7.jpg")
    write_appledouble(root / "train" / "._cat.0.jpg")
    with pytest.raises(BadImageError, match=r"train/\._cat\.0\.jpg: an AppleDouble file.*1 more unreadable"):
        read_catsdogs(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = read_catsdogs(root, skip_bad=True)
    assert [str(w.message).split(" (")[0] for w in caught] == ["skipped 2 unreadable image files of 13"]
    assert caught[0].category is BadImagesSkipped
    assert {f.name for f, _ in files.train} == {f"cat.{n}.jpg" for n in (0, 1, 2, 3, 90)} | {
        f"dog.{n}.jpg" for n in (0, 1, 2, 3, 91)
    } | {"dog.92.png"}


@pytest.mark.parametrize("under", ["", "train"])
@pytest.mark.parametrize("names", [("cats", "dogs"), ("Cat", "DOG")])
def test_one_folder_per_class(tmp_path, under, names):
    class_folders(tmp_path / under if under else tmp_path, names)
    files = read_catsdogs(tmp_path)
    assert sorted(label for _, label in files.train) == [0, 0, 0, 1, 1, 1]
    assert files.val is None and files.test is None


def test_class_folders_with_their_own_val_and_test(tmp_path):
    class_folders(tmp_path / "train")
    class_folders(tmp_path / "valid", per_class=2)
    class_folders(tmp_path / "test", per_class=1)
    files = read_catsdogs(tmp_path)
    assert (len(files.train), len(files.val), len(files.test)) == (6, 4, 2)
    assert all(f.parent.parent.name == "valid" for f, _ in files.val)


def test_split_off_is_seeded_stratified_and_disjoint(realdata):
    items = read_catsdogs(realdata / "catsdogs").train
    train, val = split_off(items, 0.1, seed=0)
    assert len(val) == 4 and sorted(label for _, label in val) == [0, 0, 1, 1]
    assert not set(train) & set(val) and len(train) + len(val) == len(items)
    assert split_off(items, 0.1, seed=0) == (train, val)
    assert split_off(items, 0.1, seed=1)[1] != val
    with pytest.raises(DataError, match="val_fraction must be between 0 and 1"):
        split_off(items, 1.0, seed=0)


def test_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="missing: no such folder"):
        find_files(tmp_path / "missing")
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="a.jpg: is a file, not a folder"):
        find_files(tmp_path / "a.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: found no cat or dog images"):
        find_files(tmp_path / "empty")
    write_image(tmp_path / "only" / "cats" / "0.jpg")
    with pytest.raises(DataError, match="only: has a cats folder but no dogs folder"):
        find_files(tmp_path / "only")
    class_folders(tmp_path / "hollow")
    for f in (tmp_path / "hollow" / "dogs").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="dogs: holds no image files"):
        find_files(tmp_path / "hollow")
    write_image(tmp_path / "cats-only" / "train" / "cat.0.jpg")  # Kaggle's layout, one class: refused alike
    write_image(tmp_path / "cats-only" / "train" / "cat.1.jpg")
    for path in (tmp_path / "cats-only", tmp_path / "cats-only" / "train"):
        with pytest.raises(DataError, match=r"train: has cat.N images but no dog.N images"):
            read_catsdogs(path)


def test_skipping_every_image_of_one_class_is_refused(tmp_path):
    root = kaggle_folder(tmp_path, per_class=2, extras=False)
    for n in range(2):
        write_corrupt(root / "train" / f"dog.{n}.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImagesSkipped)
        with pytest.raises(DataError, match="no readable dog image is left in the train split"):
            read_catsdogs(root, skip_bad=True)


def test_a_kaggle_train_file_without_a_label_in_its_name(tmp_path):
    root = kaggle_folder(tmp_path, extras=False)
    write_image(root / "train" / "puppy.jpg")
    with pytest.raises(DataError, match="puppy.jpg: cannot tell cat from dog"):
        read_catsdogs(root)


def test_no_readable_image_left(tmp_path):
    root = tmp_path / "k"
    write_corrupt(root / "train" / "cat.0.jpg")
    write_corrupt(root / "train" / "dog.0.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImagesSkipped)
        with pytest.raises(DataError, match="no readable images in the train split"):
            read_catsdogs(root, skip_bad=True)
