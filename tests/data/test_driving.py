"""Udacity driving logs: the three real flavours, path resolution, malformed rows, preprocessing, augmentation."""

import numpy as np
import pytest
import torch
from PIL import Image

from deepfuse.data import DataError
from deepfuse.data.driving import (
    HEIGHT,
    SHIFT_STEERING_PER_PIXEL,
    WIDTH,
    SteeringDataset,
    block_split,
    find_logs,
    frame_times,
    jitter,
    load_frames,
    looks_like_keystrokes,
    preprocess,
    read_log,
    smooth_steering,
    to_yuv,
)


def write_log(folder, rows, header=False, windows=False, separator=", "):
    """A driving log in the simulator's format: ``rows`` of (stamp, steering, speed); 320x160 JPEGs in IMG/."""
    (folder / "IMG").mkdir(parents=True, exist_ok=True)
    lines = ["center,left,right,steering,throttle,brake,speed"] if header else []
    rng = np.random.default_rng(0)
    for stamp, steering, speed in rows:
        names = [f"{camera}_{stamp}.jpg" for camera in ("center", "left", "right")]
        for name in names:
            Image.fromarray(rng.integers(0, 256, (160, 320, 3), dtype=np.uint8)).save(folder / "IMG" / name)
        paths = [f"C:\\Users\\me\\sim data\\IMG\\{n}" if windows else f"IMG/{n}" for n in names]
        lines.append(separator.join([*paths, steering, "0.5", "0", speed]))
    (folder / "driving_log.csv").write_text("\n".join(lines) + "\n")
    return folder / "driving_log.csv"


def test_udacity_sample_with_header_relative_paths_and_spaces(realdata):
    folder = realdata / "driving" / "udacity_sample"
    logs = find_logs(folder)
    assert logs == [folder / "data" / "driving_log.csv"]  # nothing from __MACOSX
    rows = read_log(logs[0])
    assert len(rows) == 30
    assert rows[0].center == folder / "data" / "IMG" / "center_2016_12_01_13_30_48_287.jpg"
    assert rows[0].left.name == "left_2016_12_01_13_30_48_287.jpg" and rows[0].speed == pytest.approx(22.14829)
    assert all("__MACOSX" not in str(path) for r in rows for path in (r.center, r.left, r.right))
    assert all(r.steering != 0 for r in rows[5:])  # the turn
    frames = load_frames(rows)
    assert frames.images.shape == (30, 3, HEIGHT, WIDTH, 3) and frames.has_side.all()
    assert frames.images[:, 0].std() > 10  # real pictures, not blanks


def test_self_recorded_without_header_with_windows_paths(realdata):
    folder = realdata / "driving" / "self_recorded"
    rows = read_log(find_logs(folder)[0])
    assert len(rows) == 30
    assert rows[0].center == folder / "IMG" / "center_2024_11_21_09_57_08_654.jpg"
    assert rows[0].speed == pytest.approx(4.770404e-05)  # scientific notation
    steering = [r.steering for r in rows]
    assert min(steering) == -1.0 or max(steering) == 1.0
    assert load_frames(rows[:3]).images.shape == (3, 3, HEIGHT, WIDTH, 3)


def test_2018_recording_without_spaces(realdata):
    folder = realdata / "driving" / "self_recorded_2018"
    rows = read_log(folder / "driving_log.csv")
    assert len(rows) == 20 and rows[0].steering == pytest.approx(-0.1698113)
    assert rows[0].right == folder / "IMG" / "right_2018_02_26_10_41_13_221.jpg"


def test_a_folder_of_all_three_flavours(realdata):
    logs = find_logs(realdata / "driving")
    assert len(logs) == 3
    assert sum(len(read_log(log)) for log in logs) == 80


def test_windows_paths_resolve_by_name_beside_the_csv(tmp_path):
    log = write_log(
        tmp_path,
        [("2024_01_01_00_00_00_000", "-1", "4.770404E-05"), ("2024_01_01_00_00_00_100", "1", "30.1")],
        windows=True,
    )
    rows = read_log(log)
    assert [r.center for r in rows] == [
        tmp_path / "IMG" / "center_2024_01_01_00_00_00_000.jpg",
        tmp_path / "IMG" / "center_2024_01_01_00_00_00_100.jpg",
    ]
    assert rows[0].speed == pytest.approx(4.770404e-05) and rows[1].steering == 1.0


def test_malformed_rows_name_the_file_and_line(tmp_path):
    log = write_log(tmp_path, [("a", "0", "1"), ("b", "0.1", "2"), ("c", "0.2", "3")], header=True)
    lines = log.read_text().splitlines()
    cases = {
        "steering is not a number: 'left'": lines[:2] + [lines[2].replace("0.1", "left")],
        "expected 7 fields": lines[:3] + [lines[3].rsplit(",", 1)[0]],
        "not found": lines[:3] + [lines[3].replace("center_c", "center_missing")],
        "non-finite": lines[:3] + [lines[3].replace("0.2", "nan")],
    }
    for problem, content in cases.items():
        log.write_text("\n".join(content) + "\n")
        with pytest.raises(DataError, match=rf"driving_log.csv, line {len(content)}: .*{problem}"):
            read_log(log)
    log.write_text("when,where,what\n")
    with pytest.raises(DataError, match="line 1: unexpected header"):
        read_log(log)
    log.write_text("center,left,right,steering,throttle,brake,speed\n")
    with pytest.raises(DataError, match="holds no rows"):
        read_log(log)


def test_apple_double_files_are_never_images(tmp_path):
    log = write_log(tmp_path / "data", [("a", "0", "1")])
    mac = tmp_path / "__MACOSX" / "data"
    (mac / "IMG").mkdir(parents=True)
    (mac / "IMG" / "._center_a.jpg").write_bytes(b"\0\5\26\7" + b"\0" * 218)
    (mac / "driving_log.csv").write_text("junk\n")
    assert find_logs(tmp_path) == [log]
    log.write_text(log.read_text().replace("IMG/center_a.jpg", "IMG/._center_a.jpg"))
    with pytest.raises(DataError, match="AppleDouble"):
        read_log(log)


def test_missing_folder_and_folder_without_logs(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        find_logs(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no driving_log.csv"):
        find_logs(tmp_path)


def test_yuv_of_known_colours():
    colours = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    yuv = to_yuv(colours)[0].astype(int)
    assert yuv[0].tolist() == [255, 128, 128] and yuv[1].tolist() == [0, 128, 128]
    assert yuv[2].tolist() == [76, 90, 255]  # Y = 0.299 R = 76.2; U = 0.492 (B - Y) + 128 = 90.5; V clipped
    assert yuv[3].tolist() == [29, 239, 103]


def test_preprocess_crops_sky_and_bonnet_then_resizes():
    image = np.zeros((160, 320, 3), dtype=np.uint8)
    image[:60] = (255, 0, 0)  # sky
    image[60:135] = (0, 255, 0)  # road
    image[135:] = (0, 0, 255)  # bonnet
    out = preprocess(image)
    assert out.shape == (HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    assert (out == to_yuv(np.array([[[0, 255, 0]]], dtype=np.uint8))[0, 0]).all()


def test_side_cameras_and_mirrors_augment_the_training_set(tmp_path):
    log = write_log(tmp_path, [("a", "0.1", "1"), ("b", "-0.95", "1")])
    frames = load_frames(read_log(log))
    train = SteeringDataset(frames, augment=True, correction=0.2)
    assert len(train) == 2 * 3 * 2
    steering = sorted(round(float(train[i][1]), 4) for i in range(len(train)))
    assert steering == sorted([0.1, 0.3, -0.1, -0.95, -0.75, -1.0, -0.1, -0.3, 0.1, 0.95, 0.75, 1.0])
    image, target = train[0]
    assert image.shape == (3, HEIGHT, WIDTH) and image.dtype == torch.float32 and target.shape == (1,)
    assert image.min() >= -1.0 and image.max() <= 1.0
    mirrored = train[len(train) // 2][0]
    assert torch.equal(mirrored, image.flip(-1))
    assert len(SteeringDataset(frames, augment=False)) == 2
    assert len(SteeringDataset(frames, augment=True, flip=False, side_cameras=False)) == 2


def test_block_split_is_disjoint_complete_and_fixed():
    train, val, test = block_split(1000, seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(1000))
    assert len(val) == len(test) == 100
    assert (np.diff(val) == 1).sum() >= 90  # blocks of consecutive rows
    assert all(np.array_equal(a, b) for a, b in zip(block_split(1000, seed=0), (train, val, test), strict=True))
    small = block_split(3)
    assert [len(part) for part in small] == [1, 1, 1]


def test_keystroke_labels_are_recognised():
    keyboard = np.zeros(100)
    keyboard[::7] = 0.25
    keyboard[3::11] = -0.5
    assert looks_like_keystrokes(keyboard)[0]
    assert "exact zeros" in looks_like_keystrokes(keyboard)[1]
    analogue = np.random.default_rng(0).normal(0, 0.1, 100)
    assert not looks_like_keystrokes(analogue)[0]
    steady_turn = np.full(100, 0.1)  # few distinct values but no zeros: not a keyboard's
    assert not looks_like_keystrokes(steady_turn)[0]


def test_smoothing_spreads_a_tap_in_time_and_never_across_a_pause():
    times = np.concatenate([np.arange(20) * 0.1, 10.0 + np.arange(20) * 0.1])  # a 8 s pause after frame 19
    steering = np.zeros(40)
    steering[[9, 19]] = 1.0  # a tap inside the first stretch, one just before the pause
    smooth = smooth_steering(steering, times, 0.3)
    assert smooth.dtype == np.float32 and (smooth[20:] == 0).all()  # nothing leaks over the pause
    assert smooth[4:15].sum() == pytest.approx(1.0, abs=0.02)  # inside a stretch, a tap's area is kept
    assert 0 < smooth[6] < smooth[8] < smooth[9] < 0.5 and smooth[8] == pytest.approx(smooth[10], rel=0.02)
    assert np.array_equal(smooth_steering(steering, times, 0.0), steering.astype(np.float32))


def test_frame_times_come_from_the_image_names(realdata, tmp_path):
    rows = read_log(realdata / "driving" / "udacity_sample" / "data" / "driving_log.csv")
    times = frame_times(rows)
    steps = np.diff(times)
    assert times[0] == 0 and (steps > 0).all() and np.median(steps) < 0.2  # ~10 Hz
    assert steps[1] > 20 and steps[4] > 60  # the standing start pauses 24.5 s; the trimmed log jumps to row 841
    log = write_log(tmp_path, [("a", "0", "1"), ("b", "0", "1"), ("c", "0", "1")])
    assert np.allclose(frame_times(read_log(log)), [0.0, 0.1, 0.2])  # no time stamps: 10 Hz assumed


def test_jitter_shifts_with_a_steering_correction_and_shades():
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[..., 0] = 200
    image[:, 100, 0] = 50  # a dark line in the middle
    image[..., 1:] = 128
    for seed in range(5):
        out, steering = jitter(image, 0.1, np.random.default_rng(seed))
        line = int(np.argmin(out[HEIGHT // 2, 20:180, 0].astype(int) - out[HEIGHT // 2, 19:179, 0])) + 20
        shift = (steering - 0.1) / SHIFT_STEERING_PER_PIXEL
        assert abs(shift - round(shift)) < 1e-6 and abs(shift) <= 20
        assert abs(line - (100 + round(shift))) <= 1, (seed, line, shift)
        assert out.dtype == np.uint8 and (out[..., 1:] == 128).all()  # brightness and shadow touch Y only
        assert out[..., 0].std() > 0  # a shadow's edge or the line


def test_most_straight_frames_can_be_left_out_of_training(tmp_path):
    stamps = [(f"s{i}", "0" if i % 4 else "0.3", "1") for i in range(40)]  # 30 straight, 10 turning
    frames = load_frames(read_log(write_log(tmp_path, stamps)))
    kept = SteeringDataset(frames, augment=True, straight_keep=0.2, seed=0, side_cameras=False, flip=False)
    straight = np.abs(frames.steering[kept.rows]) < 0.01
    assert (~straight).sum() == 10 and 1 <= straight.sum() <= 12
    assert np.array_equal(kept.rows, SteeringDataset(frames, augment=True, straight_keep=0.2, seed=0).rows)
    assert len(SteeringDataset(frames, augment=False, straight_keep=0.2)) == 40  # validation and test keep all
    with pytest.raises(ValueError, match="straight_keep"):
        SteeringDataset(frames, augment=True, straight_keep=1.5)
