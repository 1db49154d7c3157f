"""digits: the CNN trains and agrees across backends; the loaders read the real MNIST files and the built-in digits."""

import gzip
import struct

import numpy as np
import pytest
import torch

from deepfuse import models
from deepfuse.data import DataError
from deepfuse.data.mnist import load_split, read_idx
from tests.models.helpers import assert_backend_agrees, assert_loss_falls

TASK = models.get("digits")


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def fake_mnist(folder, n_train=60, n_test=20, size=28, compress=True):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, size, size)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), compress)
    return folder


def test_builtin_digits_split_is_fixed_and_complete():
    first = TASK.load_data(None, {})
    second = TASK.load_data(None, {})
    assert (len(first.train), len(first.val), len(first.test)) == (1257, 270, 270)
    assert torch.equal(first.test.tensors[0], second.test.tensors[0])
    assert first.state["image_size"] == 8


def test_reads_real_mnist_t10k(realdata):
    folder = realdata / "mnist"
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.array_equal(read_idx(folder / "uncompressed" / "t10k-labels-idx1-ubyte"), labels)
    assert len(read_idx(folder / "train-labels-idx1-ubyte.gz")) == 60000


def test_real_mnist_folder_without_train_images_names_the_missing_file(realdata):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_split(realdata / "mnist", "train")


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_mnist_folder_loads(tmp_path, compress):
    data = TASK.load_data(fake_mnist(tmp_path, compress=compress), {})
    assert data.state["image_size"] == 28
    assert len(data.train) + len(data.val) == 60 and len(data.test) == 20


def test_idx_errors_name_the_file(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(struct.pack(">IIII", 0x0000_0903, 1, 2, 2) + b"\0" * 4)
    with pytest.raises(DataError, match=r"bad: not an IDX file"):
        read_idx(bad_magic)
    truncated = tmp_path / "train-images-idx3-ubyte"
    truncated.write_bytes(struct.pack(">IIII", 0x0803, 10, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated"):
        read_idx(truncated)
    labels = tmp_path / "labels"
    write_idx(labels, np.zeros(3))
    with pytest.raises(DataError, match="expected MNIST images"):
        read_idx(labels, expected_magic=0x803)
    broken_gzip = tmp_path / "x.gz"
    broken_gzip.write_bytes(gzip.compress(b"0123456789")[:12])
    with pytest.raises(DataError, match="x.gz"):
        read_idx(broken_gzip)


def _batch(size=6):
    data = TASK.load_data(None, {})
    x = torch.stack([data.train[i][0] for i in range(size)])
    y = torch.stack([data.train[i][1] for i in range(size)])
    return data.state, x, y


def test_a_few_steps_lower_the_loss():
    state, x, y = _batch(32)
    assert_loss_falls(TASK, state, {}, x, y)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_triton_agrees_with_torch(train):
    state, x, y = _batch(3)
    assert_backend_agrees(TASK, state, {}, x, y, "triton", train=train)


def test_example_batch_builds_a_28px_model():
    state, x, y = TASK.example(2, {})
    assert TASK.build({}, state)(x).shape == (2, 10)
