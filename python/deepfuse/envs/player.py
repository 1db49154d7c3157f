"""A picture of a drive: each frame is the car's camera beside a view from above; written as an animated GIF or
as a PNG strip of evenly spaced frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from deepfuse.envs.camera import TopView, udacity_cameras
from deepfuse.envs.closed_loop import Pilot, drive
from deepfuse.envs.env import picture
from deepfuse.envs.tracks import TrackSet, make_track


def play(
    pilot: Pilot,
    *,
    split: str = "test",
    track: int = 0,
    steps: int = 300,
    gif: str | Path | None = None,
    png: str | Path | None = None,
    strip_frames: int = 8,
    every: int = 1,
    style: str = "road",
) -> dict:
    """Drive track ``track`` of ``split`` (in ``style``) with ``pilot`` for ``steps`` steps, keep every ``every``-th
    frame, write them to ``gif`` and/or a ``strip_frames``-frame strip to ``png``; returns the drive's metrics."""
    if gif is None and png is None:
        raise ValueError("give gif=... or png=... (where to write the pictures)")
    frames = []
    view = TopView(160)

    def record(sim, images):
        if sim.steps[0] % every == 0 or not frames:
            camera = images[0] if images is not None else sim.render(_camera_for_pictures(pilot))[0]
            frames.append(picture(sim, camera, 0, view))

    metrics = drive(pilot, TrackSet.of([make_track(split, track, style)]), steps, on_step=record)
    if gif is not None:
        images = [Image.fromarray(f) for f in frames]
        images[0].save(gif, save_all=True, append_images=images[1:], duration=100 * every, loop=0, optimize=False)
    if png is not None:
        chosen = np.linspace(0, len(frames) - 1, min(strip_frames, len(frames))).round().astype(int)
        Image.fromarray(np.concatenate([frames[i] for i in chosen], 0)).save(png)
    return metrics | {"frames": len(frames)}


def _camera_for_pictures(pilot: Pilot):
    return pilot.camera or udacity_cameras()["center"]
