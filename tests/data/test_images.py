"""Image files: channel conversion of every Pillow mode these datasets hold, checks of bad files (corrupt,
truncated, AppleDouble), decode errors through DataLoader workers, resize/normalise, augmentation.

The writers below make fixtures in the real formats; tests/data/test_catsdogs.py and test_chest_xray.py use them.
"""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from deepfuse.data import DataError
from deepfuse.data.images import (
    Augment,
    BadImageError,
    BadImagesSkipped,
    ImageDataset,
    ImageTransform,
    check_images,
    image_files,
    image_problem,
    load_image,
    natural_key,
    random_resized_crop_box,
    to_channels,
)

# what macOS's archiver writes as ._name beside each file (the first bytes of the real sample's 222-byte files)
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00\x02" + b"\x00" * 200


def noise(size=(40, 30), channels=3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_image(path, mode="RGB", size=(40, 30), seed=0, fmt=None):
    """A noise image of ``mode`` at ``path`` (format from the suffix unless ``fmt``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        image = Image.fromarray(noise(size, 3, seed), "RGB")
    elif mode == "L":
        image = Image.fromarray(noise(size, 1, seed), "L")
    elif mode == "CMYK":
        image = Image.fromarray(noise(size, 4, seed), "CMYK")
    elif mode == "P":  # palette with a transparent index, as GIFs and PNGs from the web have
        image = Image.fromarray(noise(size, 1, seed) % 16, "P")
        image.putpalette(list(noise((16, 1), 3, seed).ravel()))
        image.info["transparency"] = 0
    elif mode == "RGBA":
        image = Image.fromarray(noise(size, 4, seed), "RGBA")
    elif mode == "I;16":
        image = Image.fromarray(noise(size, 1, seed).astype(np.uint16) * 16)  # mode I;16
    else:
        raise ValueError(mode)
    image.save(path, format=fmt, **({"transparency": 0} if mode == "P" else {}))
    return path


def write_corrupt(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return path


def write_truncated_jpeg(path):
    """A JPEG whose header is whole but whose compressed data stops halfway (an interrupted download)."""
    buffer = io.BytesIO()
    Image.fromarray(noise((64, 64), 3, 5), "RGB").save(buffer, format="JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def write_appledouble(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(APPLEDOUBLE)
    return path


# --- channel conversion -------------------------------------------------------------------------------------
def test_to_channels_every_mode():
    gray = Image.new("L", (2, 1), 100)
    assert np.asarray(to_channels(gray, 3)).tolist() == [[[100, 100, 100]] * 2]
    rgb = Image.new("RGB", (1, 1), (10, 200, 30))
    assert to_channels(rgb, 1).getpixel((0, 0)) == round(0.299 * 10 + 0.587 * 200 + 0.114 * 30)  # ITU-R 601 luma
    assert to_channels(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), 3).getpixel((0, 0)) == (255, 0, 0)
    assert to_channels(Image.new("1", (1, 1), 1), 1).getpixel((0, 0)) == 255
    # transparency is composited over white; opaque pixels keep their colour
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (20, 40, 60, 255))
    assert np.asarray(to_channels(rgba, 3)).tolist() == [[[255, 255, 255], [20, 40, 60]]]
    half = to_channels(Image.new("LA", (1, 1), (0, 128)), 1).getpixel((0, 0))
    assert abs(half - 127) <= 1
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 9, 99, 199])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_channels(palette, 3)).tolist() == [[[255, 255, 255], [9, 99, 199]]]
    del palette.info["transparency"]
    assert np.asarray(to_channels(palette, 3)).tolist() == [[[0, 0, 0], [9, 99, 199]]]


@pytest.mark.parametrize(("peak", "expected"), [(200, 200), (4095, 255), (2048, 128), (65535, 255), (32768, 128)])
def test_sixteen_bit_grayscale_is_scaled_by_its_range(peak, expected):
    image = Image.fromarray(np.array([[0, peak]], dtype=np.uint16))
    assert image.mode == "I;16"
    assert np.asarray(to_channels(image, 1)).tolist() == [[0, expected]]


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("RGB", ".jpg"),
        ("L", ".jpg"),
        ("CMYK", ".jpg"),
        ("P", ".png"),
        ("RGBA", ".png"),
        ("I;16", ".png"),
        ("P", ".gif"),
    ],
)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_file_mode_loads_to_the_models_channels(tmp_path, mode, suffix, channels):
    path = write_image(tmp_path / f"x{suffix}", mode)
    image = load_image(path, channels)
    assert image.mode == ("L" if channels == 1 else "RGB") and image.size == (40, 30)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(noise((40, 30)), "RGB").save(path, exif=exif)
    assert load_image(path, 3).size == (30, 40)


def test_jpeg_draft_decodes_at_reduced_scale_but_never_below_the_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(noise((400, 300)), "RGB").save(path)
    assert load_image(path, 3, size=64).size == (100, 75)  # 1/4: 1/8 would be 50 x 38 < 64
    assert load_image(path, 1, size=16).size == (50, 38)


# --- bad files ----------------------------------------------------------------------------------------------
def test_image_files_lists_image_suffixes_only(tmp_path):
    for name in ("b.JPG", "a.jpeg", "c.png", "._a.jpeg", ".DS_Store", "notes.txt", "Thumbs.db"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in image_files(tmp_path)] == ["._a.jpeg", "a.jpeg", "b.JPG", "c.png"]


def test_natural_order():
    from pathlib import Path

    names = ["10.jpg", "2.jpg", "1.jpg", "cat.10.jpg", "cat.9.jpg"]
    assert [p.name for p in sorted(map(Path, names), key=natural_key)] == [
        "1.jpg",
        "2.jpg",
        "10.jpg",
        "cat.9.jpg",
        "cat.10.jpg",
    ]


def test_bad_files_are_named(tmp_path):
    good = write_image(tmp_path / "good.jpg")
    corrupt = write_corrupt(tmp_path / "corrupt.jpg")
    apple = write_appledouble(tmp_path / "._good.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert image_problem(good) is None
    assert "not a readable image" in image_problem(corrupt) and "not a readable image" in image_problem(empty)
    assert "AppleDouble" in image_problem(apple)
    with pytest.raises(BadImageError, match=r"corrupt\.jpg: not a readable image.*2 more unreadable.*skip"):
        check_images([good, corrupt, apple, empty])
    error = pytest.raises(DataError, check_images, [good, apple]).value
    assert error.path == apple and "\n" not in str(error)


def test_skip_bad_drops_them_with_one_warning_line(tmp_path):
    files = [write_image(tmp_path / f"{i}.jpg", seed=i) for i in range(3)]
    files.insert(1, write_corrupt(tmp_path / "bad.jpg"))
    files.append(write_appledouble(tmp_path / "._0.jpg"))
    files.append(write_truncated_jpeg(tmp_path / "cut.jpg"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = check_images(files, skip_bad=True)
    assert kept == [files[0], files[2], files[3]]
    assert len(caught) == 1 and caught[0].category is BadImagesSkipped
    message = str(caught[0].message)
    assert "skipped 3 unreadable image files of 6" in message and "bad.jpg" in message and "\n" not in message


def test_a_truncated_jpeg_passes_the_header_check_and_is_named_when_decoded(tmp_path):
    cut = write_truncated_jpeg(tmp_path / "cut.jpg")
    assert check_images([cut]) == [cut]  # the header check cannot see it ...
    with pytest.raises(BadImageError, match="cut.jpg"):
        check_images([cut], decode=True)  # ... a decode can
    dataset = ImageDataset([cut], [0], ImageTransform(8, 3, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(BadImageError, match=r"cut\.jpg: not a readable image \(OSError: image file is truncated"):
        dataset[0]


def test_a_decode_error_in_a_dataloader_worker_still_names_the_file(tmp_path):
    good, cut = write_image(tmp_path / "good.jpg"), write_truncated_jpeg(tmp_path / "cut.jpg")
    dataset = ImageDataset([good, cut], [0, 1], ImageTransform(8, 3, (0.5,) * 3, (0.5,) * 3))
    with pytest.raises(DataError) as caught:
        list(DataLoader(dataset, batch_size=1, num_workers=1))
    message = str(caught.value)
    assert message.startswith(f"{cut}: not a readable image (OSError: image file is truncated")
    assert message.endswith("(in DataLoader worker process 0)") and "\n" not in message


# --- transforms ---------------------------------------------------------------------------------------------
def test_eval_transform_resizes_the_whole_image_and_normalises(tmp_path):
    path = tmp_path / "flat.png"
    Image.new("RGB", (50, 20), (51, 102, 204)).save(path)
    x = ImageTransform(16, 3, (0.1, 0.2, 0.3), (0.5, 0.25, 0.125))(path)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = torch.tensor([(0.2 - 0.1) / 0.5, (0.4 - 0.2) / 0.25, (0.8 - 0.3) / 0.125])
    torch.testing.assert_close(x.mean((1, 2)), expected, rtol=0, atol=1e-6)
    gray = ImageTransform(16, 1, (0.5,), (0.25,))(path)
    assert gray.shape == (1, 16, 16)


def test_transform_checks_its_arguments():
    with pytest.raises(ValueError, match="mean and std need 3"):
        ImageTransform(8, 3, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="size must be >= 1"):
        ImageTransform(0, 1, (0.5,), (0.5,))


def test_flip_mirrors_and_a_full_crop_is_the_eval_image(tmp_path):
    path = tmp_path / "square.png"
    Image.fromarray(noise((32, 32)), "RGB").save(path)
    stats = ((0.5,) * 3, (0.25,) * 3)
    plain = ImageTransform(16, 3, *stats)(path)
    whole = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)
    torch.testing.assert_close(ImageTransform(16, 3, *stats, whole)(path), plain, rtol=0, atol=0)
    flipped = Augment(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0)
    torch.testing.assert_close(ImageTransform(16, 3, *stats, flipped)(path), plain.flip(-1), rtol=0, atol=0)


def test_augmentation_is_random_but_seeded(tmp_path):
    path = write_image(tmp_path / "x.jpg", size=(60, 45))
    transform = ImageTransform(24, 1, (0.5,), (0.25,), Augment(rotate=10.0))
    torch.manual_seed(3)
    first = transform(path)
    second = transform(path)
    torch.manual_seed(3)
    assert first.shape == (1, 24, 24) and not torch.equal(first, second)
    assert torch.equal(transform(path), first)


def test_random_resized_crop_box_respects_scale_and_ratio():
    torch.manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(120, 80, (0.3, 0.9), (3 / 4, 4 / 3))
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 120 and 0 <= top < bottom <= 80
        assert 0.3 * 9600 * 0.95 <= w * h <= 0.9 * 9600 * 1.05
        assert 3 / 4 * 0.93 <= w / h <= 4 / 3 * 1.07
    # no crop of that area and aspect fits a 100 x 10 strip: the centre crop of the nearest aspect
    assert random_resized_crop_box(100, 10, (0.9, 1.0), (3 / 4, 4 / 3)) == (43, 0, 56, 10)
