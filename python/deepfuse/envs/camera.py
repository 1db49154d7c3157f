"""Cameras as look-up tables: for every pixel, the ground point it sees in the car's frame (metres ahead, metres
to the left) and how much haze lies over it. The tables depend on the camera alone, so rendering a frame is
one rotation, one translation and one raster look-up per pixel (``physics.render``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepfuse.envs.physics import SKY_LEVEL


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on the car, looking forward and pitched down; ``lateral`` > 0 mounts it to the left.

    Ground farther than ``max_distance`` is sky; haze grows linearly from ``fog_start`` to ``max_distance``
    (in ``SKY_LEVEL`` steps).
    """

    width: int
    height: int
    fov: float = 90.0  # horizontal field of view, degrees
    pitch: float = 15.0  # degrees below the horizon
    mount_height: float = 1.5  # metres above the ground
    lateral: float = 0.0  # metres left of the car's centre line
    forward: float = 0.0  # metres ahead of the car's reference point
    max_distance: float = 80.0
    fog_start: float = 30.0

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(forward, lateral, haze): ground offsets (height, width) float64 and haze levels uint8."""
        focal = (self.width / 2) / math.tan(math.radians(self.fov) / 2)
        u = (np.arange(self.width) + 0.5 - self.width / 2) / focal  # right of the optical axis
        v = (np.arange(self.height) + 0.5 - self.height / 2) / focal  # below it
        u, v = np.meshgrid(u, v)
        pitch = math.radians(self.pitch)
        # the ray (1, -u, -v) in camera axes (forward, left, up), pitched down
        ahead = math.cos(pitch) - v * math.sin(pitch)
        up = -math.sin(pitch) - v * math.cos(pitch)
        hits = up < -1e-9
        scale = np.where(hits, self.mount_height / np.where(hits, -up, 1.0), np.inf)
        forward = np.where(hits, scale * ahead, 0.0)
        lateral = np.where(hits, scale * -u, 0.0)
        distance = np.hypot(forward, lateral)
        fog = np.clip((distance - self.fog_start) / (self.max_distance - self.fog_start), 0.0, 1.0)
        fog[~hits] = 1.0
        forward = np.where(fog < 1.0, forward + self.forward, 0.0)
        lateral = np.where(fog < 1.0, lateral + self.lateral, 0.0)
        haze = np.round(fog * SKY_LEVEL).astype(np.uint8)
        return np.ascontiguousarray(forward), np.ascontiguousarray(lateral), haze


@dataclass(frozen=True)
class TopView:
    """Looking straight down on the ground around the car, the car's heading up the image."""

    size: int = 160
    ahead: float = 40.0  # metres shown ahead of the car
    behind: float = 10.0  # metres shown behind it (the view is square: ahead + behind wide)

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        span = self.ahead + self.behind
        centres = (np.arange(self.size) + 0.5) / self.size
        forward = np.repeat((self.ahead - centres * span)[:, None], self.size, 1)
        lateral = np.repeat(((0.5 - centres) * span)[None, :], self.size, 0)
        return np.ascontiguousarray(forward), np.ascontiguousarray(lateral), np.zeros((self.size, self.size), np.uint8)

    def pixel(self, forward: float, lateral: float) -> tuple[float, float]:
        """(row, column) where the ground point ``forward`` ahead and ``lateral`` left of the car appears."""
        span = self.ahead + self.behind
        return (self.ahead - forward) / span * self.size, (0.5 - lateral / span) * self.size


def rl_camera(size: int = 64) -> Camera:
    """The reinforcement-learning agent's small square camera: high and pitched down, to see the bends ahead."""
    return Camera(size, size, fov=100.0, pitch=30.0, mount_height=3.0)


# Udacity's simulator: three 320x160 cameras, the side ones about a metre off the centre line.
UDACITY_SIZE = (320, 160)
SIDE_CAMERA_OFFSET = 1.0  # metres


def udacity_cameras() -> dict[str, Camera]:
    width, height = UDACITY_SIZE
    mounts = {"center": 0.0, "left": SIDE_CAMERA_OFFSET, "right": -SIDE_CAMERA_OFFSET}
    return {
        name: Camera(width, height, fov=60.0, pitch=6.0, mount_height=1.5, lateral=lateral)
        for name, lateral in mounts.items()
    }
