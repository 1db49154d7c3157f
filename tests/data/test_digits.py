"""deepfuse.data.digits: the MNIST splits and the images a user gives to ``deepfuse predict digits``."""

import numpy as np
import pytest
from PIL import Image

from deepfuse.data import DataError
from deepfuse.data.digits import load_mnist_splits, read_digit_images
from tests.models.test_digits import fake_mnist, write_idx


def test_mnist_splits_carve_a_fixed_validation_split_from_train(tmp_path):
    first, second = load_mnist_splits(fake_mnist(tmp_path)), load_mnist_splits(tmp_path)
    assert [len(first[s][0]) for s in ("train", "val", "test")] == [54, 6, 20]
    assert np.array_equal(first["val"][0], second["val"][0])
    assert first["train"][0].dtype == np.float32 and 0.0 <= first["train"][0].min() <= first["train"][0].max() <= 1.0


def test_ink_on_paper_and_a_transparent_png_read_as_white_digits_on_black(tmp_path):
    ink = np.full((28, 28), 255, np.uint8)
    ink[10:18, 12:16] = 0  # a black stroke on white paper
    Image.fromarray(ink).save(tmp_path / "paper.png")
    rgba = np.zeros((28, 28, 4), np.uint8)  # transparent background (black but invisible), an opaque black stroke
    rgba[10:18, 12:16, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    images, names = read_digit_images([str(tmp_path / "paper.png"), str(tmp_path / "transparent.png")], 28)
    assert names == ["paper.png", "transparent.png"] and tuple(images.shape) == (2, 28, 28)
    for image in images:  # the stroke bright, the background dark
        assert image[10:18, 12:16].min() == 1.0 and image[:8].max() == 0.0


def test_idx_files_give_every_image_resized(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((3, 8, 8), 255))
    images, names = read_digit_images([str(tmp_path / "t10k-images-idx3-ubyte")], 28)
    assert names == [f"t10k-images-idx3-ubyte[{i}]" for i in range(3)] and tuple(images.shape) == (3, 28, 28)
    assert np.allclose(images.numpy(), 1.0)


def test_a_missing_or_unreadable_file_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="missing.png: no such file"):
        read_digit_images([str(tmp_path / "missing.png")], 28)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match="notes.png: not a readable image"):
        read_digit_images([str(tmp_path / "notes.png")], 28)
