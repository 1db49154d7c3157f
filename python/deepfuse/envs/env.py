"""gymnasium environments over the batched simulator: ``DriveEnv`` (one car) and ``DriveVectorEnv`` (N cars
stepped and rendered in one compiled call each).

Observation: the car's camera, (size, size, 3) uint8 RGB. Action: steering in [-1, 1] (> 0 turns right,
±1 = ±25°), shape (1,); with ``throttle="agent"`` shape (2,): steering and throttle (< 0 brakes); by default
an automatic throttle holds ``target_speed``. Reward: metres of progress along the centre line, scaled by
(1 - |offset| / half width). Terminated when a wheel leaves the road; truncated after ``max_steps``.
Tracks: ``tracks`` tracks of ``split`` ("train", "val", "test" — disjoint; see ``deepfuse.envs.tracks``).

The vector environment resets finished cars in the same step (gymnasium's ``AutoresetMode.SAME_STEP``): the
observation is the new episode's, and ``info["final_obs"]`` / ``info["final_info"]`` hold the finished one's.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from PIL import Image, ImageDraw

from deepfuse.envs.camera import TopView, rl_camera
from deepfuse.envs.sim import Simulator
from deepfuse.envs.tracks import SPLITS, TrackSet


def _check(split: str, tracks: int, image_size: int, throttle: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if tracks < 1:
        raise ValueError(f"tracks must be >= 1, got {tracks}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    if throttle not in ("auto", "agent"):
        raise ValueError(f"throttle must be 'auto' or 'agent', got {throttle!r}")


def _spaces(image_size: int, throttle: str):
    observation = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
    action = gym.spaces.Box(-1.0, 1.0, (1 if throttle == "auto" else 2,), np.float32)
    return observation, action


def _controls(actions: np.ndarray, throttle: str, n: int):
    actions = np.asarray(actions, dtype=np.float64).reshape(n, -1)
    return actions[:, 0], (None if throttle == "auto" else actions[:, 1])


def picture(sim: Simulator, camera_image: np.ndarray, car: int = 0, view: TopView | None = None) -> np.ndarray:
    """The camera image (scaled to the top view's height) beside a top view with the car drawn in."""
    view = view or TopView(160)
    top = Image.fromarray(sim.render(view, [car])[0])
    draw = ImageDraw.Draw(top)
    corners = [view.pixel(ahead, left) for ahead, left in ((2.2, 0.9), (2.2, -0.9), (-2.2, -0.9), (-2.2, 0.9))]
    draw.polygon([(c, r) for r, c in corners], fill=(20, 60, 200), outline=(255, 255, 255))
    h, w = camera_image.shape[:2]
    camera = Image.fromarray(camera_image).resize((max(1, round(w * view.size / h)), view.size), Image.NEAREST)
    out = Image.new("RGB", (camera.width + view.size + 4, view.size), (255, 255, 255))
    out.paste(camera, (0, 0))
    out.paste(top, (camera.width + 4, 0))
    return np.asarray(out)


class DriveEnv(gym.Env):
    """One car on procedurally generated tracks, seen through its camera (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        split: str = "train",
        tracks: int = 8,
        image_size: int = 64,
        max_steps: int = 1000,
        target_speed: float = 8.0,
        throttle: str = "auto",
    ) -> None:
        _check(split, tracks, image_size, throttle)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode, self.throttle = render_mode, throttle
        self.camera = rl_camera(image_size)
        self.sim = Simulator(1, TrackSet.split(split, tracks), max_steps=max_steps, target_speed=target_speed)
        self.observation_space, self.action_space = _spaces(image_size, throttle)
        self._last = None

    def _info(self) -> dict:
        sim = self.sim
        return {
            "speed": float(sim.speed[0]),
            "offset": float(sim.offset[0]),
            "progress": float(sim.progress[0]),
            "track": int(sim.track[0]),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.sim.reset([0], self.np_random)
        self._last = self.sim.render(self.camera)[0]
        return self._last.copy(), self._info()

    def step(self, action):
        steer, throttle = _controls(action, self.throttle, 1)
        reward, terminated, truncated = self.sim.step(steer, throttle)
        self._last = self.sim.render(self.camera)[0]
        return self._last.copy(), float(reward[0]), bool(terminated[0]), bool(truncated[0]), self._info()

    def render(self):
        if self.render_mode == "rgb_array" and self._last is not None:
            return picture(self.sim, self._last)
        return None


class DriveVectorEnv(VectorEnv):
    """``num_envs`` cars stepped and rendered together (see the module docstring)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 8,
        *,
        split: str = "train",
        tracks: int = 8,
        image_size: int = 64,
        max_steps: int = 1000,
        target_speed: float = 8.0,
        throttle: str = "auto",
    ) -> None:
        _check(split, tracks, image_size, throttle)
        self.num_envs, self.throttle = num_envs, throttle
        self.camera = rl_camera(image_size)
        self.sim = Simulator(num_envs, TrackSet.split(split, tracks), max_steps=max_steps, target_speed=target_speed)
        self.single_observation_space, self.single_action_space = _spaces(image_size, throttle)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.returns = np.zeros(num_envs)  # of the episodes under way

    def _info(self) -> dict:
        sim = self.sim
        return {"speed": sim.speed, "offset": sim.offset, "progress": sim.progress, "track": sim.track.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.sim.reset(np.arange(self.num_envs), self.np_random)
        self.returns[:] = 0.0
        return self.sim.render(self.camera), self._info()

    def step(self, actions):
        steer, throttle = _controls(actions, self.throttle, self.num_envs)
        reward, terminated, truncated = self.sim.step(steer, throttle)
        self.returns += reward
        observations = self.sim.render(self.camera)
        info = self._info()
        done = np.flatnonzero(terminated | truncated)
        if len(done):
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in done:
                final_obs[i] = observations[i].copy()
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[done] = True
            final_info = {key: value.copy() for key, value in info.items()}
            final_info["episode_return"] = self.returns.copy()
            final_info.update({f"_{key}": mask for key in list(final_info)})
            info.update(final_obs=final_obs, _final_obs=mask, final_info=final_info, _final_info=mask)
            self.sim.reset(done, self.np_random)
            self.returns[done] = 0.0
            observations[done] = self.sim.render(self.camera, done)
            info.update(self._info())
        return observations, reward, terminated, truncated, info

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue these episodes exactly (cars, returns, the RNG)."""
        return {"sim": self.sim.state_dict(), "returns": self.returns.copy(), "rng": self.np_random.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.sim.load_state_dict(state["sim"])
        self.returns[:] = state["returns"]
        self.np_random.bit_generator.state = state["rng"]

    def observe(self) -> np.ndarray:
        """The current observations (rendered again: rendering is a pure function of the state)."""
        return self.sim.render(self.camera)
