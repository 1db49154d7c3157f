"""The closed loop tells a good pilot from poor ones: narrow test tracks with bends as sharp as a real car can take,
the wheels (not the car's centre) leaving the road, the lateral error; the expert (the good reference here: the
trained PilotNet's numbers are the slow test in tests/models/test_driving.py) against straight, constant, mean and
random steering."""

import numpy as np
import pytest

from deepfuse.envs import physics
from deepfuse.envs.closed_loop import baseline_pilots, drive, expert_pilot
from deepfuse.envs.sim import Simulator
from deepfuse.envs.tracks import LATERAL_ACCELERATION, NARROW_SPEED, STYLES, TrackSet, make_track, sharpest_bend


def _bend_radii(points):
    a, b, c = points, np.roll(points, -1, 0), np.roll(points, -2, 0)
    cross = (b - a)[:, 0] * (c - b)[:, 1] - (b - a)[:, 1] * (c - b)[:, 0]
    sides = np.linalg.norm(b - a, axis=1) * np.linalg.norm(c - b, axis=1) * np.linalg.norm(c - a, axis=1)
    return sides / np.maximum(2 * np.abs(cross), 1e-12)


def test_narrow_tracks_bend_as_sharply_as_a_real_car_can_take():
    sharpest = sharpest_bend(NARROW_SPEED)
    assert sharpest == pytest.approx(NARROW_SPEED**2 / LATERAL_ACCELERATION) and 8.0 < sharpest < 8.3  # 0.8 g
    for index in range(3):
        track = make_track("test", index, "narrow")
        tightest = _bend_radii(track.points).min()  # three-point radii on the 1 m resampling: a few % slack
        assert 0.9 * sharpest < tightest < 1.1 * STYLES["narrow"].max_tightest_bend, (index, tightest)
        assert 2.0 <= track.half_width <= 2.5 and track.style == "narrow"
        road = make_track("test", index)
        assert road.half_width >= 3.5 and _bend_radii(road.points).min() > 0.9 * 15.0  # the default style is kept
    mixed = TrackSet.split("train", 3, style="mixed")
    assert [t.style for t in mixed.tracks] == ["road", "narrow", "road"]
    with pytest.raises(ValueError, match="style"):
        make_track("test", 0, "muddy")


def test_a_wheel_off_the_road_ends_the_episode_though_the_centre_is_on_it():
    tracks = TrackSet.split("test", 1, style="narrow")
    half = tracks.half_width[0]
    sim = Simulator(2, tracks, max_steps=10)
    # both centres on the road; car 1's left wheels 0.8 m further out, beyond the edge
    sim.place([0, 1], 0, 50.0, [half - physics.HALF_TRACK - 0.3, half - physics.HALF_TRACK + 0.3])
    assert (np.abs(sim.offset) < half).all()
    assert sim.on_road().tolist() == [True, False]
    _, terminated, _ = sim.step(np.zeros(2))
    assert terminated.tolist() == [False, True]


def test_the_expert_drives_far_better_than_straight_constant_mean_and_random_pilots():
    tracks = TrackSet.split("test", 3, style="narrow")
    steps = 300  # 30 s, more than a lap of every track at 8 m/s
    expert = drive(expert_pilot(), tracks, steps)
    assert expert["interventions"] == 0 and expert["autonomy"] == 1.0 and expert["laps"] > 1.0, expert
    assert expert["rms_lateral_error_m"] < 0.3, expert  # measured 0.21 m
    for pilot in baseline_pilots(mean_steering=0.01, seed=0):
        poor = drive(pilot, tracks, steps)
        # measured: every baseline leaves the road within 15 m and ~32 times in 30 s (autonomy 0.0)
        assert poor["autonomy"] < 0.5 * expert["autonomy"], (pilot.name, poor)
        assert poor["mean_distance_m"] < 0.2 * expert["mean_distance_m"], (pilot.name, poor)
        assert poor["mean_return"] < 0.2 * expert["mean_return"], (pilot.name, poor)
        assert poor["interventions"] >= 5, (pilot.name, poor)
        assert poor["rms_lateral_error_m"] > expert["rms_lateral_error_m"], (pilot.name, poor)
