"""The simulator: tracks, the compiled step and renderer against the numpy reference, determinism, the expert,
the gymnasium environments."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from deepfuse.envs import ENV_ID, physics, reference
from deepfuse.envs.camera import Camera, TopView, rl_camera, udacity_cameras
from deepfuse.envs.closed_loop import drive, expert_pilot, random_pilot
from deepfuse.envs.env import DriveEnv, DriveVectorEnv
from deepfuse.envs.sim import Simulator
from deepfuse.envs.tracks import MIN_BEND_RADIUS, RESOLUTION, TrackSet, make_track
from tests.tolerances import ATOL

EXACT = ATOL[torch.float64]


@pytest.fixture(scope="module")
def tracks():
    return TrackSet.split("train", 3)


def _random_sim(tracks, n=13, seed=1, **kwargs):
    sim = Simulator(n, tracks, **kwargs)
    sim.reset(np.arange(n), np.random.default_rng(seed))
    return sim


def test_tracks_are_closed_smooth_and_split_apart():
    track = make_track("train", 0)
    step = np.linalg.norm(np.diff(track.points, axis=0, append=track.points[:1]), axis=1)
    assert abs(step.mean() - 1.0) < 0.05 and step.max() < 1.1  # resampled every metre, closed
    assert abs(track.length - step.sum()) < 1e-9
    # bend radius from three consecutive points: the rule the generator enforces (with resampling slack)
    a, b, c = track.points, np.roll(track.points, -1, 0), np.roll(track.points, -2, 0)
    cross = (b - a)[:, 0] * (c - b)[:, 1] - (b - a)[:, 1] * (c - b)[:, 0]
    radius = np.linalg.norm(b - a, axis=1) * np.linalg.norm(c - b, axis=1) * np.linalg.norm(c - a, axis=1)
    radius /= np.maximum(2 * np.abs(cross), 1e-12)
    assert radius.min() > 0.9 * MIN_BEND_RADIUS
    assert make_track("train", 0) is track  # cached
    firsts = [make_track(split, 0).points[0] for split in ("train", "val", "test")]
    assert len({tuple(np.round(p, 6)) for p in firsts}) == 3
    with pytest.raises(ValueError, match="split"):
        make_track("holdout", 0)


def test_raster_marks_the_road_where_the_centreline_runs():
    track = make_track("val", 1)
    cells = np.floor((track.points - track.origin) / RESOLUTION).astype(int)
    on_centre = track.grid[cells[:, 1], cells[:, 0]]
    assert np.isin(on_centre, [physics.ROAD, physics.CENTRE_LINE]).all()
    assert (on_centre == physics.CENTRE_LINE).mean() > 0.3  # the dashes
    corners = track.grid[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert np.isin(corners, [physics.GRASS_A, physics.GRASS_B]).all()


@pytest.mark.parametrize("auto_throttle", [True, False], ids=["auto-throttle", "agent-throttle"])
def test_compiled_step_equals_numpy_reference(tracks, auto_throttle):
    sim = _random_sim(tracks, max_steps=7)
    rng = np.random.default_rng(2)
    for _ in range(10):
        steer, throttle = rng.uniform(-1.3, 1.3, sim.num_cars), rng.uniform(-1.3, 1.3, sim.num_cars)
        expected = reference.step(
            sim.cars,
            sim.seg,
            sim.track,
            sim.steps,
            steer,
            throttle,
            auto_throttle,
            sim.target_speed,
            sim.max_steps,
            tracks,
        )
        reward, terminated, truncated = sim.step(steer, None if auto_throttle else throttle)
        np.testing.assert_allclose(sim.cars, expected[0], rtol=0, atol=EXACT)
        np.testing.assert_array_equal(sim.seg, expected[1])
        np.testing.assert_array_equal(sim.steps, expected[2])
        np.testing.assert_allclose(reward, expected[3], rtol=0, atol=EXACT)
        np.testing.assert_array_equal(terminated, expected[4])
        np.testing.assert_array_equal(truncated, expected[5])
    assert truncated.all()  # 10 steps > max_steps


@pytest.mark.parametrize("threads", ["serial", "parallel"])
@pytest.mark.parametrize(
    "camera", [rl_camera(32), udacity_cameras()["left"], TopView(48)], ids=["rl", "udacity", "top"]
)
def test_compiled_render_equals_numpy_reference(tracks, camera, threads):
    sim = _random_sim(tracks, n=5)
    sim.cars[0, physics.X] += 500.0  # one car far off the raster: grass everywhere
    physics.set_render_threads(threads)
    try:
        images = sim.render(camera)
    finally:
        physics.set_render_threads("auto")
    expected = reference.render(sim.cars, sim.track, tracks, *camera.tables(), RESOLUTION)
    np.testing.assert_array_equal(images, expected)
    assert images.dtype == np.uint8 and images.shape == (5, *camera.tables()[0].shape, 3)
    assert len(np.unique(images[1].reshape(-1, 3), axis=0)) > 4  # road, lines, kerbs, grass, sky


def test_camera_sees_the_road_ahead_and_the_sky_above():
    forward, lateral, haze = Camera(64, 64, fov=90, pitch=15).tables()
    assert (haze[0] == physics.SKY_LEVEL).all() and (haze[-1] == 0).all()
    assert (forward[-1] > 0).all() and np.diff(forward[-12:, 32]).max() < 0  # nearer further down the image
    assert lateral[-1, 0] > 0 > lateral[-1, -1]  # left of the image is left of the car


def test_simulation_is_deterministic_for_a_seed():
    def run(seed):
        envs = DriveVectorEnv(6, tracks=2, image_size=16, max_steps=30)
        observations, _ = envs.reset(seed=seed)
        rng = np.random.default_rng(seed)
        frames, rewards = [observations], []
        for _ in range(40):
            observations, reward, *_ = envs.step(rng.uniform(-1, 1, (6, 1)))
            frames.append(observations)
            rewards.append(reward)
        return np.stack(frames), np.stack(rewards)

    first, again, other = run(3), run(3), run(4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_expert_completes_a_lap_on_unseen_tracks():
    tracks = TrackSet.split("test", 2)
    laps = np.ceil(tracks.length.max() / 7.5 / physics.DT).astype(int) + 20  # one lap at ~7.8 m/s, and some
    expert = drive(expert_pilot(), tracks, int(laps))
    assert expert["interventions"] == 0 and expert["autonomy"] == 1.0
    assert expert["laps"] >= 1.0, expert
    random = drive(random_pilot(0), tracks, 200)
    assert random["interventions"] > 0 and random["mean_return"] < 0.5 * expert["mean_return"]


def test_expert_stays_near_the_centre_line(tracks):
    sim = _random_sim(tracks, n=6, max_steps=10_000)
    sim.place(np.arange(6), np.arange(6) % 3, 0.0)
    worst = 0.0
    for _ in range(300):
        _, terminated, _ = sim.step(sim.expert())
        worst = max(worst, np.abs(sim.offset).max())
        assert not terminated.any()
    assert worst < 0.5


def test_gymnasium_check_env_passes():
    env = gym.make(ENV_ID, tracks=2, image_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env reports problems as warnings
        check_env(env.unwrapped)
    picture = env.unwrapped.render()
    assert picture is None  # render_mode None
    env = DriveEnv(render_mode="rgb_array", tracks=2, image_size=32)
    observation, info = env.reset(seed=0)
    assert observation.shape == (32, 32, 3) and set(info) == {"speed", "offset", "progress", "track"}
    assert env.render().shape == (160, 164 + 160, 3)  # camera scaled to 160 px, a gap, the top view


def test_vector_env_resets_finished_cars_in_the_same_step():
    envs = DriveVectorEnv(4, tracks=2, image_size=16, max_steps=5)
    observations, _ = envs.reset(seed=0)
    assert observations.shape == (4, 16, 16, 3) and envs.observation_space.contains(observations)
    assert envs.action_space.shape == (4, 1)
    total = np.zeros(4)
    for _ in range(4):
        _, reward, terminated, truncated, info = envs.step(np.zeros((4, 1)))
        assert not (terminated | truncated).any() and "final_obs" not in info
        total += reward
    observations, reward, terminated, truncated, info = envs.step(np.zeros((4, 1)))
    assert truncated.all() and info["_final_obs"].all()
    assert all(final.shape == (16, 16, 3) for final in info["final_obs"])
    np.testing.assert_allclose(info["final_info"]["episode_return"], total + reward, rtol=0, atol=EXACT)
    assert (envs.sim.steps == 0).all() and (envs.returns == 0).all()  # the next episodes began
    assert np.array_equal(observations, envs.observe())


def test_vector_env_state_round_trip_continues_identically():
    envs = DriveVectorEnv(3, tracks=2, image_size=16, max_steps=20)
    envs.reset(seed=5)
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 3, 1))
    for t in range(10):
        envs.step(actions[t])
    saved = envs.state_dict()
    first = [envs.step(actions[t])[:2] for t in range(10, 30)]
    again = DriveVectorEnv(3, tracks=2, image_size=16, max_steps=20)
    again.reset(seed=99)
    again.load_state_dict(saved)
    second = [again.step(actions[t])[:2] for t in range(10, 30)]
    for (obs_a, reward_a), (obs_b, reward_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(reward_a, reward_b)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="image_size"):
        DriveVectorEnv(2, image_size=4)
    with pytest.raises(ValueError, match="throttle"):
        DriveEnv(throttle="pedal")
    with pytest.raises(ValueError, match="num_cars"):
        Simulator(0, TrackSet.split("train", 1))
    with pytest.raises(ValueError, match="track indices"):
        Simulator(1, TrackSet.split("train", 1)).place([0], [3], 0.0)
    sim = Simulator(2, TrackSet.split("train", 1))
    old = sim.state_dict() | {"cars": np.zeros((2, 8))}  # saved before the wheels' column
    with pytest.raises(ValueError, match="another version of the simulator"):
        sim.load_state_dict(old)
