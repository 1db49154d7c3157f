"""Procedurally generated closed tracks: a smooth centreline from a seed, a road width, and a raster of the
ground (two shades of grass, kerbs, road, white edge lines, a dashed yellow centre line) that the camera samples.

A track is a star-shaped closed curve r(θ) = R (1 + Σ_k a_k cos(kθ + φ_k)), k = 2..5, redrawn until its
tightest bend has a radius of at least its style's minimum and no two far-apart stretches of road come close,
then resampled every metre of arc length; half of the tracks run clockwise. Each split ("train", "val",
"test") draws from its own seed stream, so validation and test tracks are never training tracks.

Two styles: "road" (7-9 m wide, bends of 15 m radius or more: what the gymnasium environments and PPO use) and
"narrow" (4-5 m wide, and every track has a bend between the sharpest a real car can take at ``NARROW_SPEED`` and
1.5 times that radius): the closed-loop test tracks of behavioural cloning. The sharpest bend is
v² / ``LATERAL_ACCELERATION``: 0.8 g, about the grip limit of a road car's tyres on dry asphalt, so at 8 m/s a
radius of 8.2 m (above the car's own turning circle, L / tan 25° = 5.6 m).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from deepfuse.envs import physics

SPLITS = {"train": 0, "val": 1, "test": 2}
RESOLUTION = 0.1  # metres per raster cell
SPACING = 1.0  # metres between centreline points
MIN_BEND_RADIUS = 15.0  # metres: the "road" style's sharpest bend; the car turns down to L / tan(25°) ≈ 5.6 m
MARGIN = 8.0  # metres of grass around the road in the raster
LATERAL_ACCELERATION = 0.8 * 9.81  # m/s²: about the most a road car's tyres hold on dry asphalt
NARROW_SPEED = 8.0  # m/s: the closed loop's target speed, which the narrow tracks' sharpest bends are sized for


def sharpest_bend(speed: float) -> float:
    """The smallest bend radius (m) a real car can take at ``speed`` m/s: v² / LATERAL_ACCELERATION, and no
    smaller than the simulated car's turning circle."""
    return max(speed**2 / LATERAL_ACCELERATION, physics.WHEELBASE / np.tan(physics.MAX_STEER))


@dataclass(frozen=True)
class Style:
    """How a track is drawn: road half width (m), base radius R (m), the largest amplitude of each harmonic,
    the smallest bend radius allowed and (optionally) the largest the tightest bend may have."""

    half_width: tuple[float, float]
    radius: tuple[float, float]
    amplitude: tuple[float, ...]
    min_bend: float
    max_tightest_bend: float | None = None


STYLES = {
    "road": Style((3.5, 4.5), (35.0, 55.0), (0.22, 0.12, 0.07, 0.04), MIN_BEND_RADIUS),
    "narrow": Style(
        (2.0, 2.5),
        (24.0, 36.0),
        (0.30, 0.16, 0.09, 0.06),
        sharpest_bend(NARROW_SPEED),
        1.5 * sharpest_bend(NARROW_SPEED),
    ),
}


@dataclass(frozen=True)
class Track:
    """One closed track. ``points`` (M, 2) lie every ~1 m along the centreline (x east, y north, metres);
    segment j runs from point j to point j + 1 (the last back to 0); ``cum[j]`` is the arc length at point j.
    ``grid`` (H, W) holds the ground class of each 0.1 m cell (``physics.GRASS_A`` ...), cell (0, 0)'s corner
    at ``origin``."""

    points: np.ndarray
    cum: np.ndarray
    seglen: np.ndarray
    length: float
    half_width: float
    grid: np.ndarray
    origin: np.ndarray
    seed: tuple
    style: str = "road"

    def pose(self, s: np.ndarray, offset: np.ndarray | float = 0.0):
        """(x, y, heading, segment) of the points at arc length ``s`` shifted ``offset`` metres to the left."""
        s = np.mod(np.asarray(s, dtype=np.float64), self.length)
        j = np.clip(np.searchsorted(self.cum, s, side="right") - 1, 0, len(self.cum) - 1)
        a, b = self.points[j], self.points[(j + 1) % len(self.points)]
        t = (s - self.cum[j]) / self.seglen[j]
        tangent = (b - a) / self.seglen[j][..., None]
        left = np.stack([-tangent[..., 1], tangent[..., 0]], -1)
        xy = a + (b - a) * t[..., None] + left * np.asarray(offset, dtype=np.float64)[..., None]
        return xy[..., 0], xy[..., 1], np.arctan2(tangent[..., 1], tangent[..., 0]), j


def _centreline(rng: np.random.Generator, half_width: float, style: Style) -> np.ndarray:
    """Dense points (4096, 2) of a smooth closed curve meeting the style's bend-radius and clearance rules."""
    theta = np.linspace(0.0, 2 * np.pi, 4096, endpoint=False)
    k = np.arange(2, 6)[:, None]
    for _ in range(1000):
        radius = rng.uniform(*style.radius)
        amplitude = rng.uniform(0.0, 1.0, 4)[:, None] * np.array(style.amplitude)[:, None]
        phase = rng.uniform(0.0, 2 * np.pi, 4)[:, None]
        r = radius * (1 + (amplitude * np.cos(k * theta + phase)).sum(0))
        dr = radius * (-(amplitude * k * np.sin(k * theta + phase)).sum(0))
        ddr = radius * (-(amplitude * k**2 * np.cos(k * theta + phase)).sum(0))
        curvature = (r**2 + 2 * dr**2 - r * ddr) / (r**2 + dr**2) ** 1.5  # of a polar curve r(θ)
        tightest = 1 / np.abs(curvature).max()
        if tightest < style.min_bend or (style.max_tightest_bend is not None and tightest > style.max_tightest_bend):
            continue
        points = np.stack([r * np.cos(theta), r * np.sin(theta)], -1)
        if _clear(points, half_width):
            return points
    raise RuntimeError("no track met the bend-radius and clearance rules in 1000 draws")  # never seen


def _clear(points: np.ndarray, half_width: float) -> bool:
    """No two points more than 60 m apart along the track lie closer than two road widths and a kerb."""
    coarse = points[::16]
    step = np.linalg.norm(np.diff(coarse, axis=0, append=coarse[:1]), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(step)[:-1]])
    total = step.sum()
    along = np.abs(cum[:, None] - cum[None, :])
    along = np.minimum(along, total - along)
    distance = np.linalg.norm(coarse[:, None] - coarse[None, :], axis=-1)
    return bool((distance[along > 60.0] > 4 * half_width + 4.0).all())


def _resample(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    closed = np.concatenate([dense, dense[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    total = arc[-1]
    count = int(round(total / SPACING))
    s = np.linspace(0.0, total, count, endpoint=False)
    points = np.stack([np.interp(s, arc, closed[:, 0]), np.interp(s, arc, closed[:, 1])], -1)
    seglen = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seglen)[:-1]])
    return points, cum, seglen, float(seglen.sum())


@functools.lru_cache(maxsize=256)
def make_track(split: str, index: int, style: str = "road") -> Track:
    """Track ``index`` of ``split`` ("train", "val" or "test") in ``style`` ("road" or "narrow"): the same track
    on every machine."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    if index < 0:
        raise ValueError(f"track index must be >= 0, got {index}")
    shape = STYLES[style]
    seed = [SPLITS[split], int(index)] if style == "road" else [SPLITS[split], int(index), list(STYLES).index(style)]
    rng = np.random.default_rng(seed)
    half_width = float(rng.uniform(*shape.half_width))
    dense = _centreline(rng, half_width, shape)
    if rng.random() < 0.5:
        dense = dense[::-1].copy()  # clockwise
    points, cum, seglen, length = _resample(dense)
    origin = points.min(0) - (half_width + MARGIN)
    height, width = np.ceil((points.max(0) + half_width + MARGIN - origin) / RESOLUTION).astype(int)[::-1]
    grid = physics.rasterize(points, cum, seglen, half_width, origin, RESOLUTION, int(height), int(width))
    for array in (points, cum, seglen, grid, origin):
        array.setflags(write=False)
    return Track(points, cum, seglen, length, half_width, grid, origin, (split, int(index)), style)


@dataclass(frozen=True)
class TrackSet:
    """Several tracks' arrays concatenated, as the compiled kernels take them (track k's points are
    ``points[offset[k] : offset[k] + count[k]]``, its raster ``cells[cell_offset[k] :]`` row-major)."""

    tracks: tuple
    points: np.ndarray
    cum: np.ndarray
    seglen: np.ndarray
    offset: np.ndarray
    count: np.ndarray
    length: np.ndarray
    half_width: np.ndarray
    cells: np.ndarray
    cell_offset: np.ndarray
    grid_shape: np.ndarray
    origin: np.ndarray

    @classmethod
    def of(cls, tracks) -> TrackSet:
        tracks = tuple(tracks)
        if not tracks:
            raise ValueError("a track set needs at least one track")
        count = np.array([len(t.points) for t in tracks], dtype=np.int64)
        sizes = np.array([t.grid.size for t in tracks], dtype=np.int64)
        return cls(
            tracks=tracks,
            points=np.ascontiguousarray(np.concatenate([t.points for t in tracks])),
            cum=np.concatenate([t.cum for t in tracks]),
            seglen=np.concatenate([t.seglen for t in tracks]),
            offset=np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64),
            count=count,
            length=np.array([t.length for t in tracks]),
            half_width=np.array([t.half_width for t in tracks]),
            cells=np.concatenate([t.grid.ravel() for t in tracks]),
            cell_offset=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
            grid_shape=np.array([t.grid.shape for t in tracks], dtype=np.int64),
            origin=np.ascontiguousarray(np.stack([t.origin for t in tracks])),
        )

    @classmethod
    def split(cls, split: str, count: int, first: int = 0, style: str = "road") -> TrackSet:
        """Tracks ``first .. first + count - 1`` of ``split`` in ``style``; style "mixed": alternately a road
        and a narrow track (road first)."""
        if count < 1:
            raise ValueError(f"the number of tracks must be >= 1, got {count}")
        if style == "mixed":
            return cls.of(make_track(split, first + i // 2, ("road", "narrow")[i % 2]) for i in range(count))
        return cls.of(make_track(split, i, style) for i in range(first, first + count))

    def __len__(self) -> int:
        return len(self.tracks)
