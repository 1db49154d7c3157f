"""The recorder writes Udacity-format logs that the loader reads back; ``deepfuse drive record | play``; the
benchmark runs."""

import json

import numpy as np
import pytest
from PIL import Image

from deepfuse import cli
from deepfuse.data.driving import find_logs, load_frames, read_log
from deepfuse.envs.recorder import drive_expert, record


def test_recording_is_read_back_by_the_udacity_loader(tmp_path):
    log = record(tmp_path / "run", rows=12, seed=3, tracks=2)
    assert find_logs(tmp_path) == [log]
    text = log.read_text().splitlines()
    assert text[0] == "center,left,right,steering,throttle,brake,speed" and len(text) == 13
    assert text[1].startswith("IMG/center_2026_01_01_12_00_00_000.jpg, IMG/left_")
    rows = read_log(log)
    expected = list(drive_expert(12, 3, tracks=2))
    np.testing.assert_allclose([r.steering for r in rows], [f["steering"] for f in expected], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([r.speed for r in rows], [f["speed"] for f in expected], rtol=1e-6)
    assert any(r.steering != 0 for r in rows)
    with Image.open(rows[5].left) as image:
        assert image.size == (320, 160)
        left = np.asarray(image, dtype=np.float64)
    assert np.abs(left - expected[5]["left"]).mean() < 8  # the JPEG of the left camera's frame
    frames = load_frames(rows)
    assert frames.images.shape == (12, 3, 66, 200, 3) and frames.has_side.all()
    assert not np.array_equal(frames.images[:, 1], frames.images[:, 2])  # the side cameras see differently


def test_expert_labels_point_back_to_the_centre_line():
    frames = list(drive_expert(120, 0, tracks=2))
    steering = np.array([f["steering"] for f in frames])
    assert np.abs(steering).max() <= 1.0 and steering.std() > 0.05  # the noise makes it correct, both ways
    assert {"center", "left", "right", "throttle", "brake", "speed"} <= set(frames[0])


def test_cli_record_writes_a_log_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "log"
    assert cli.main(["drive", "record", "--out", str(out), "--steps", "5", "--seed", "1", "--tracks", "1"]) == 0
    assert "recorded 5 frames" in capsys.readouterr().out
    assert len(read_log(out / "driving_log.csv")) == 5 and len(list((out / "IMG").glob("*.jpg"))) == 15
    assert cli.main(["drive", "record", "--out", str(out)]) == 2
    assert "already holds a driving_log.csv" in capsys.readouterr().err
    assert cli.main(["drive", "record", "--out", str(tmp_path / "x"), "--steps", "0"]) == 2


def test_cli_play_writes_a_gif_and_a_strip_of_the_expert(tmp_path, capsys):
    gif, png = tmp_path / "run.gif", tmp_path / "run.png"
    assert cli.main(["drive", "play", "--gif", str(gif), "--png", str(png), "--steps", "12", "--every", "3"]) == 0
    assert "expert on test track 0" in capsys.readouterr().out
    narrow = ["--steps", "5", "--style", "narrow", "--track", "1"]
    assert cli.main(["drive", "play", "--png", str(tmp_path / "narrow.png"), *narrow]) == 0
    assert "expert on test track 1 (narrow): " in capsys.readouterr().out
    with Image.open(gif) as image:
        assert image.n_frames == 4
    with Image.open(png) as image:
        assert image.height == 4 * 160
    assert cli.main(["drive", "play", "--steps", "5"]) == 2  # nowhere to write
    assert cli.main(["drive", "play", "--gif", str(gif), "--checkpoint", str(tmp_path / "none.pt")]) == 2


def test_benchmark_measures_rendered_steps(tmp_path):
    from deepfuse.bench import simulator as bench

    row = bench.measure(4, "auto", image_size=16, steps=5, repeats=2)
    assert row["steps_per_s"] > 0 and row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
    assert row["shape"] == "4 cars 16x16"


@pytest.mark.slow
def test_benchmark_writes_its_results(tmp_path):
    from deepfuse.bench import simulator as bench

    rows = bench.main(tmp_path, quick=True)
    (result,) = tmp_path.glob("*/*-drive_env.json")
    data = json.loads(result.read_text())
    assert len(data["rows"]) == len(rows) == 9 and "load_average" in data["environment"]


def test_keyboard_recording_is_mostly_exact_zeros_with_taps(tmp_path, capsys):
    from deepfuse.data.driving import looks_like_keystrokes

    steering = np.array([f["steering"] for f in drive_expert(200, 0, tracks=2, keyboard=0.5)])
    assert set(np.unique(steering)) <= {-1.0, -0.5, 0.0, 0.5, 1.0} and (steering != 0).any()
    assert looks_like_keystrokes(steering)[0], looks_like_keystrokes(steering)[1]
    smooth = np.array([f["steering"] for f in drive_expert(200, 0, tracks=2)])
    assert not looks_like_keystrokes(smooth)[0]  # the expert's own labels are analogue
    with pytest.raises(ValueError, match="keyboard"):
        next(drive_expert(5, 0, tracks=1, keyboard=2.0))
    out = tmp_path / "kbd"
    arguments = ["--steps", "5", "--tracks", "1", "--keyboard", "0.5", "--style", "narrow"]
    assert cli.main(["drive", "record", "--out", str(out), *arguments]) == 0
    assert {r.steering for r in read_log(out / "driving_log.csv")} <= {-1.0, -0.5, 0.0, 0.5, 1.0}
    assert cli.main(["drive", "record", "--out", str(tmp_path / "bad"), "--keyboard", "-0.1"]) == 2
    assert "--keyboard must be a steering step in [0, 1]" in capsys.readouterr().err
