"""The expert drives and the three Udacity-style cameras record: a driving log in the Udacity simulator's
format, so the whole behavioural-cloning pipeline runs offline.

Written: ``driving_log.csv`` with Udacity's header ``center,left,right,steering,throttle,brake,speed`` and rows
like ``IMG/center_2026_01_01_12_00_00_000.jpg, IMG/left_..., IMG/right_..., -0.05, 0.4, 0, 17.4`` (relative
paths, a space after each comma, as in Udacity's sample), and ``IMG/{center,left,right}_<time>.jpg`` (320x160
JPEG). Steering is the expert's command in [-1, 1] (> 0 right, ±1 = ±25°), speed in mph.

The car executes the expert's steering plus Ornstein-Uhlenbeck noise, so the log shows the car drifting and
the expert steering back (the recorded label is the expert's command without the noise). A car that leaves
the road anyway, or has driven ``episode_steps`` (30 s by default), starts again at a random place of a random
track, so that a log covers many tracks.

``keyboard`` (a step q > 0) records as a person at a keyboard drives: the command is the expert's steering
quantised to multiples of q by a sigma-delta modulator (a key tapped as often as the bend needs), so the log
holds mostly exact zeros with spikes of ±q, ±2q ..., like public keyboard recordings; the car executes those
taps (plus the noise).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from deepfuse.envs import physics
from deepfuse.envs.camera import udacity_cameras
from deepfuse.envs.sim import Simulator
from deepfuse.envs.tracks import TrackSet

MPH = 2.2369363  # per m/s
START = datetime.datetime(2026, 1, 1, 12, 0, 0)
NOISE_DECAY, NOISE_STEP = 0.8, 0.12  # OU noise on the executed steering: stationary std 0.12 / 0.6 = 0.2


def drive_expert(
    rows: int,
    seed: int = 0,
    *,
    split: str = "train",
    tracks: int = 8,
    noise: float = 1.0,
    episode_steps: int = 300,
    target_speed: float = 8.0,
    style: str = "road",
    keyboard: float = 0.0,
) -> Iterator[dict]:
    """``rows`` time steps of one expert-driven car, each ``{"center" | "left" | "right": (160, 320, 3) uint8,
    "steering", "throttle", "brake", "speed" (mph)}``; ``noise`` scales the steering noise (0: none); ``style``
    of the tracks ("road", "narrow", "mixed"); ``keyboard`` > 0: keyboard-like quantised steering (see above)."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if not 0.0 <= keyboard <= 1.0:
        raise ValueError(f"keyboard must be a steering step in [0, 1] (0: off), got {keyboard}")
    rng = np.random.default_rng(seed)
    sim = Simulator(1, TrackSet.split(split, tracks, style=style), max_steps=episode_steps, target_speed=target_speed)
    sim.reset([0], rng)
    cameras = udacity_cameras()
    wobble, owed = 0.0, 0.0  # owed: the steering the keyboard has not yet given (the sigma-delta's integrator)
    for _ in range(rows):
        frame = {name: sim.render(camera)[0] for name, camera in cameras.items()}
        steering = float(sim.expert()[0])
        if keyboard > 0:
            owed += steering
            steering = min(max(keyboard * round(owed / keyboard), -1.0), 1.0)
            owed -= steering
        speed = float(sim.cars[0, physics.SPEED])
        pedal = min(max(physics.THROTTLE_GAIN * (target_speed - speed), -1.0), 1.0)
        frame.update(steering=steering, throttle=max(pedal, 0.0), brake=max(-pedal, 0.0), speed=speed * MPH)
        yield frame
        wobble = NOISE_DECAY * wobble + noise * NOISE_STEP * rng.standard_normal()
        _, terminated, truncated = sim.step([steering + wobble])
        if terminated[0] or truncated[0]:
            sim.reset([0], rng)
            wobble, owed = 0.0, 0.0


def _number(value: float) -> str:
    return "0" if value == 0 else f"{value:.7g}"


def record(
    out: str | Path,
    rows: int = 1000,
    seed: int = 0,
    *,
    tracks: int = 8,
    quality: int = 90,
    style: str = "road",
    keyboard: float = 0.0,
) -> Path:
    """Drive ``rows`` steps on the training tracks and write them to ``out`` in Udacity's format; returns the
    path of ``driving_log.csv``."""
    out = Path(out)
    (out / "IMG").mkdir(parents=True, exist_ok=True)
    lines = ["center,left,right,steering,throttle,brake,speed"]
    for row, frame in enumerate(drive_expert(rows, seed, tracks=tracks, style=style, keyboard=keyboard)):
        stamp = (START + datetime.timedelta(milliseconds=100 * row)).strftime("%Y_%m_%d_%H_%M_%S_%f")[:-3]
        names = [f"IMG/{camera}_{stamp}.jpg" for camera in ("center", "left", "right")]
        for camera, name in zip(("center", "left", "right"), names, strict=True):
            Image.fromarray(frame[camera]).save(out / name, quality=quality)
        numbers = (frame["steering"], frame["throttle"], frame["brake"], frame["speed"])
        lines.append(", ".join(names + [_number(v) for v in numbers]))
    log = out / "driving_log.csv"
    temporary = out / ".driving_log.csv.tmp"
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(log)
    return log
