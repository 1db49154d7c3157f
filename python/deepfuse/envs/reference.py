"""The simulator's step and renderer in plain numpy: the specification ``physics.step`` and ``physics.render``
are tested against (same formulas, whole-batch array operations, no numba)."""

from __future__ import annotations

import numpy as np

from deepfuse.envs import physics as K


def _project(points, cum, seglen, first, count, x, y, seg):
    """Nearest centreline point for each car, searched in the same window and order as the kernel."""
    window = np.arange(-K.SEARCH_BACK, K.SEARCH_AHEAD + 1)
    j = (seg[:, None] + window[None, :]) % count[:, None]
    a = points[first[:, None] + j]
    b = points[first[:, None] + (j + 1) % count[:, None]]
    u = b - a
    t = np.clip(
        ((x[:, None] - a[..., 0]) * u[..., 0] + (y[:, None] - a[..., 1]) * u[..., 1])
        / (u[..., 0] * u[..., 0] + u[..., 1] * u[..., 1]),
        0.0,
        1.0,
    )
    dx, dy = x[:, None] - (a[..., 0] + t * u[..., 0]), y[:, None] - (a[..., 1] + t * u[..., 1])
    best = np.argmin(dx * dx + dy * dy, axis=1)  # the first of equal distances, as the kernel's strict "<"
    rows = np.arange(len(x))
    j, t, a, u = j[rows, best], t[rows, best], a[rows, best], u[rows, best]
    offset = (u[:, 0] * (y - a[:, 1]) - u[:, 1] * (x - a[:, 0])) / seglen[first + j]
    return j, cum[first + j] + t * seglen[first + j], offset


def step(cars, seg, track, steps, steer, throttle, auto_throttle, target_speed, max_steps, tracks):
    """``physics.step`` on copies: returns (cars, seg, steps, reward, terminated, truncated)."""
    cars, seg, steps = cars.copy(), seg.copy(), steps.copy()
    v = cars[:, K.SPEED]
    pedal = np.clip(K.THROTTLE_GAIN * (target_speed - v) if auto_throttle else throttle, -1.0, 1.0)
    accel = np.where(pedal >= 0.0, pedal * K.ACCEL, pedal * K.BRAKE)
    v = np.clip(v + (accel - K.DRAG * v) * K.DT, 0.0, K.MAX_SPEED)
    angle = -np.clip(steer, -1.0, 1.0) * K.MAX_STEER
    heading = cars[:, K.HEADING] + v / K.WHEELBASE * np.tan(angle) * K.DT
    x = cars[:, K.X] + v * np.cos(heading) * K.DT
    y = cars[:, K.Y] + v * np.sin(heading) * K.DT
    length, half_width = tracks.length[track], tracks.half_width[track]
    j, s, offset = _project(
        tracks.points, tracks.cum, tracks.seglen, tracks.offset[track], tracks.count[track], x, y, seg
    )
    ds = s - cars[:, K.S]
    ds = np.where(ds < -0.5 * length, ds + length, np.where(ds > 0.5 * length, ds - length, ds))
    cars[:, K.X], cars[:, K.Y], cars[:, K.HEADING], cars[:, K.SPEED] = x, y, heading, v
    cars[:, K.S], cars[:, K.OFFSET] = s, offset
    cars[:, K.PROGRESS] += ds
    cars[:, K.ODOMETER] += v * K.DT
    cars[:, K.WHEEL] = worst_wheel(tracks, track, x, y, heading, j)
    seg[:] = j
    steps += 1
    reward = ds * np.maximum(0.0, 1.0 - np.abs(offset) / half_width)
    return cars, seg, steps, reward, cars[:, K.WHEEL] > half_width, steps >= max_steps


def worst_wheel(tracks, track, x, y, heading, seg):
    """The largest |offset| of the four wheels (``physics.WHEELS``) of each car."""
    c, s = np.cos(heading), np.sin(heading)
    worst = np.zeros(len(x))
    for ahead, left in K.WHEELS:
        _, _, offset = _project(
            tracks.points,
            tracks.cum,
            tracks.seglen,
            tracks.offset[track],
            tracks.count[track],
            x + c * ahead - s * left,
            y + s * ahead + c * left,
            seg,
        )
        worst = np.maximum(worst, np.abs(offset))
    return worst


def render(cars, track, tracks, forward, lateral, haze, resolution):
    """``physics.render``: (N, H, W, 3) uint8."""
    c, s = np.cos(cars[:, K.HEADING])[:, None, None], np.sin(cars[:, K.HEADING])[:, None, None]
    x = (cars[:, K.X] - tracks.origin[track, 0])[:, None, None]
    y = (cars[:, K.Y] - tracks.origin[track, 1])[:, None, None]
    fx = (x + c * forward - s * lateral) * (1.0 / resolution)
    fy = (y + s * forward + c * lateral) * (1.0 / resolution)
    gh, gw = tracks.grid_shape[track, 0][:, None, None], tracks.grid_shape[track, 1][:, None, None]
    gx, gy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    inside = (fx >= 0) & (fy >= 0) & (gx < gw) & (gy < gh) & (haze < K.SKY_LEVEL)
    index = tracks.cell_offset[track][:, None, None] + np.where(inside, gy * gw + gx, 0)
    kind = np.where(inside, tracks.cells[index], K.GRASS_A)
    return K.SHADES[np.broadcast_to(haze, kind.shape), kind]
