"""The simulator's physics and renderer, compiled with numba (numba kernels, apart from the Triton ``kernels``
package): step N cars, render N camera images, the expert's steering, and the rasterisation of a track.
Rendering may run its image rows on numba's threads (see the note at ``render``);
every output element is written by one thread, so results do not depend on the thread count.

Car model: kinematic bicycle, semi-implicit Euler, dt = 0.1 s (the Udacity simulator logs at ~10 Hz):
    v ← clip(v + (a(throttle) - DRAG v) dt, 0, MAX_SPEED)
    heading ← heading + v / WHEELBASE · tan(-steer · MAX_STEER) dt     (steer > 0 turns right, as Udacity's)
    (x, y) ← (x, y) + v dt (cos heading, sin heading)
Reward: progress along the centreline (metres) · max(0, 1 - |offset| / half_width) (offset: of the car's reference
point, the middle of its rear axle); terminated when a wheel leaves the road (the largest |offset| of the four
wheels' contact points, ``WHEEL``, exceeds half_width); truncated after ``max_steps``.

``deepfuse.envs.reference`` computes the same with plain numpy; tests hold the two equal.
"""

from __future__ import annotations

import math
import os
import time

import numba
import numpy as np
from numba import njit, prange

# NOTE: numba's default OpenMP layer spin-waits between parallel regions; on this 2-core CI machine under load
# (load average 9) a 64-car render ran at 7.6k frames/s with it, 39k with workqueue (serial: 38k). A user's
# NUMBA_THREADING_LAYER wins. workqueue does not allow parallel kernels launched from two Python threads at once.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

# --- the car -------------------------------------------------------------------------------------------------
DT = 0.1  # s
WHEELBASE = 2.6  # m
MAX_STEER = math.radians(25.0)  # steering ±1 ↔ ±25°, as the Udacity simulator
ACCEL = 4.0  # m/s² at throttle 1
BRAKE = 8.0  # m/s² at throttle -1
DRAG = 0.05  # 1/s
MAX_SPEED = 20.0  # m/s
THROTTLE_GAIN = 0.5  # the automatic throttle: throttle = clip(gain · (target - v), -1, 1)
HALF_TRACK = 0.8  # m from the car's centre line to a wheel's contact point (a 1.6 m track, a small car's)
# the wheels' contact points in the car's frame (metres ahead of the rear axle's middle, metres to the left)
WHEELS = ((WHEELBASE, HALF_TRACK), (WHEELBASE, -HALF_TRACK), (0.0, HALF_TRACK), (0.0, -HALF_TRACK))

# columns of the car state array (N, STATE): pose (of the rear axle's middle), speed, where the car is on its
# track, and WHEEL: the largest distance of a wheel from the centre line (the car is off the road beyond half_width)
X, Y, HEADING, SPEED, S, OFFSET, PROGRESS, ODOMETER, WHEEL = range(9)
STATE = 9
SEARCH_BACK, SEARCH_AHEAD = 3, 12  # segments around the last one searched for the nearest centreline point

# --- the ground classes and their colours --------------------------------------------------------------------
GRASS_A, GRASS_B, ROAD, EDGE_LINE, CENTRE_LINE, KERB_RED, KERB_WHITE = range(7)
PALETTE = np.array(
    [[62, 138, 52], [74, 152, 60], [96, 96, 102], [236, 236, 236], [232, 200, 44], [200, 44, 40], [236, 236, 236]],
    dtype=np.float64,
)
SKY = np.array([150.0, 196.0, 236.0])
SKY_LEVEL = 32  # haze levels 0 (clear) .. SKY_LEVEL (sky); a pixel's colour is SHADES[level, ground class]
SHADES = np.round(PALETTE[None] + (SKY - PALETTE)[None] * (np.arange(SKY_LEVEL + 1) / SKY_LEVEL)[:, None, None])
SHADES = SHADES.astype(np.uint8)
KERB_WIDTH = 0.6  # m outside the road
EDGE_LINE_INSIDE, EDGE_LINE_WIDTH = 0.2, 0.25  # m: the white line's distance inside the road edge, its width
CENTRE_LINE_HALF_WIDTH, DASH, DASH_PERIOD = 0.08, 3.0, 6.0  # m
GRASS_CHECKER = 4.0  # m: the grass squares that show motion


@njit(cache=True, inline="always")
def _ground_class(distance: float, s: float, half_width: float) -> int:
    """Ground class at ``distance`` from the centreline, ``s`` metres along it (within reach of the road)."""
    if distance < CENTRE_LINE_HALF_WIDTH and s % DASH_PERIOD < DASH:
        return CENTRE_LINE
    if half_width - EDGE_LINE_INSIDE - EDGE_LINE_WIDTH <= distance < half_width - EDGE_LINE_INSIDE:
        return EDGE_LINE
    if distance < half_width:
        return ROAD
    return KERB_RED if s % 2.0 < 1.0 else KERB_WHITE


@njit(cache=True)
def rasterize(points, cum, seglen, half_width, origin, resolution, height, width):
    """The (height, width) uint8 ground raster of one track: grass everywhere, then, for every cell within
    reach of the road, the class given by its nearest centreline segment."""
    grid = np.empty((height, width), dtype=np.uint8)
    for gy in range(height):
        for gx in range(width):
            checker = int(math.floor((gx + 0.5) * resolution / GRASS_CHECKER)) + int(
                math.floor((gy + 0.5) * resolution / GRASS_CHECKER)
            )
            grid[gy, gx] = GRASS_A if checker % 2 == 0 else GRASS_B
    nearest = np.full((height, width), np.inf)
    reach = half_width + KERB_WIDTH
    count = points.shape[0]
    for j in range(count):
        ax, ay = points[j, 0], points[j, 1]
        bx, by = points[(j + 1) % count, 0], points[(j + 1) % count, 1]
        ux, uy = bx - ax, by - ay
        length2 = ux * ux + uy * uy
        x0 = max(int((min(ax, bx) - reach - origin[0]) / resolution), 0)
        x1 = min(int((max(ax, bx) + reach - origin[0]) / resolution) + 1, width)
        y0 = max(int((min(ay, by) - reach - origin[1]) / resolution), 0)
        y1 = min(int((max(ay, by) + reach - origin[1]) / resolution) + 1, height)
        for gy in range(y0, y1):
            py = origin[1] + (gy + 0.5) * resolution
            for gx in range(x0, x1):
                px = origin[0] + (gx + 0.5) * resolution
                t = min(max(((px - ax) * ux + (py - ay) * uy) / length2, 0.0), 1.0)
                dx, dy = px - (ax + t * ux), py - (ay + t * uy)
                distance = math.sqrt(dx * dx + dy * dy)
                if distance < reach and distance < nearest[gy, gx]:
                    nearest[gy, gx] = distance
                    grid[gy, gx] = _ground_class(distance, cum[j] + t * seglen[j], half_width)
    return grid


@njit(cache=True, inline="always")
def _project(points, cum, seglen, first, count, x, y, seg):
    """(segment, s, signed offset) of the point of the track's centreline nearest to (x, y), searched around
    segment ``seg``; offset > 0 is left of the direction of travel."""
    best_j, best_t, best_d2 = seg, 0.0, np.inf
    for k in range(-SEARCH_BACK, SEARCH_AHEAD + 1):
        j = (seg + k) % count
        ax, ay = points[first + j, 0], points[first + j, 1]
        nxt = first + (j + 1) % count
        ux, uy = points[nxt, 0] - ax, points[nxt, 1] - ay
        t = min(max(((x - ax) * ux + (y - ay) * uy) / (ux * ux + uy * uy), 0.0), 1.0)
        dx, dy = x - (ax + t * ux), y - (ay + t * uy)
        d2 = dx * dx + dy * dy
        if d2 < best_d2:
            best_j, best_t, best_d2 = j, t, d2
    ax, ay = points[first + best_j, 0], points[first + best_j, 1]
    nxt = first + (best_j + 1) % count
    ux, uy = points[nxt, 0] - ax, points[nxt, 1] - ay
    offset = (ux * (y - ay) - uy * (x - ax)) / seglen[first + best_j]
    return best_j, cum[first + best_j] + best_t * seglen[first + best_j], offset


@njit(cache=True, inline="always")
def _worst_wheel(points, cum, seglen, first, count, x, y, heading, seg):
    """The largest |offset| from the centre line of the four wheels of a car at (x, y, heading) near ``seg``."""
    c, s = math.cos(heading), math.sin(heading)
    worst = 0.0
    for w in range(4):
        ahead, left = WHEELS[w]
        _, _, off = _project(points, cum, seglen, first, count, x + c * ahead - s * left, y + s * ahead + c * left, seg)
        worst = max(worst, abs(off))
    return worst


@njit(cache=True)
def measure_wheels(cars, seg, track, points, cum, seglen, offset, count):
    """Fill the WHEEL column of every car (after cars were placed)."""
    for i in range(cars.shape[0]):
        k = track[i]
        cars[i, WHEEL] = _worst_wheel(
            points, cum, seglen, offset[k], count[k], cars[i, X], cars[i, Y], cars[i, HEADING], seg[i]
        )


# NOTE: stepping is ~100 ns of work per car: as a parallel kernel a 64-car step took 2 ms on the loaded 2-core CI
# machine (thread wake-ups), serial it takes microseconds; so step and expert_steer run on one thread.
@njit(cache=True)
def step(
    cars,
    seg,
    track,
    steps,
    steer,
    throttle,
    auto_throttle,
    target_speed,
    max_steps,
    points,
    cum,
    seglen,
    offset,
    count,
    length,
    half_width,
    reward,
    terminated,
    truncated,
):
    """Advance every car one time step in place; write its reward and whether its episode ended."""
    for i in range(cars.shape[0]):
        k = track[i]
        v = cars[i, SPEED]
        if auto_throttle:
            pedal = min(max(THROTTLE_GAIN * (target_speed - v), -1.0), 1.0)
        else:
            pedal = min(max(throttle[i], -1.0), 1.0)
        accel = pedal * ACCEL if pedal >= 0.0 else pedal * BRAKE
        v = min(max(v + (accel - DRAG * v) * DT, 0.0), MAX_SPEED)
        angle = -min(max(steer[i], -1.0), 1.0) * MAX_STEER
        heading = cars[i, HEADING] + v / WHEELBASE * math.tan(angle) * DT
        x = cars[i, X] + v * math.cos(heading) * DT
        y = cars[i, Y] + v * math.sin(heading) * DT
        j, s, off = _project(points, cum, seglen, offset[k], count[k], x, y, seg[i])
        ds = s - cars[i, S]
        if ds < -0.5 * length[k]:
            ds += length[k]
        elif ds > 0.5 * length[k]:
            ds -= length[k]
        cars[i, X], cars[i, Y], cars[i, HEADING], cars[i, SPEED] = x, y, heading, v
        cars[i, S], cars[i, OFFSET] = s, off
        cars[i, PROGRESS] += ds
        cars[i, ODOMETER] += v * DT
        cars[i, WHEEL] = _worst_wheel(points, cum, seglen, offset[k], count[k], x, y, heading, j)
        seg[i] = j
        steps[i] += 1
        reward[i] = ds * max(0.0, 1.0 - abs(off) / half_width[k])
        terminated[i] = cars[i, WHEEL] > half_width[k]
        truncated[i] = steps[i] >= max_steps


@njit(cache=True, inline="always")
def _render_row(
    i, r, cars, track, cells, cell_offset, grid_shape, origin, inverse_resolution, forward, lateral, haze, shades, out
):
    """Row ``r`` of car ``i``'s image: pixel (r, c) shows the ground point ``forward[r, c]`` metres ahead and
    ``lateral[r, c]`` to the left of the car, in the colour ``shades[haze[r, c], ground class]`` (haze level
    ``SKY_LEVEL``: the sky)."""
    k = track[i]
    c, s = math.cos(cars[i, HEADING]), math.sin(cars[i, HEADING])
    x, y = cars[i, X] - origin[k, 0], cars[i, Y] - origin[k, 1]
    gh, gw, base = grid_shape[k, 0], grid_shape[k, 1], cell_offset[k]
    for col in range(forward.shape[1]):
        level = haze[r, col]
        kind = GRASS_A
        if level < SKY_LEVEL:
            ahead, left = forward[r, col], lateral[r, col]
            fx = (x + c * ahead - s * left) * inverse_resolution
            fy = (y + s * ahead + c * left) * inverse_resolution
            if fx >= 0.0 and fy >= 0.0:  # int() truncates, which is floor from here on
                gx, gy = int(fx), int(fy)
                if gx < gw and gy < gh:
                    kind = cells[base + gy * gw + gx]
        out[i, r, col, 0] = shades[level, kind, 0]
        out[i, r, col, 1] = shades[level, kind, 1]
        out[i, r, col, 2] = shades[level, kind, 2]


@njit(parallel=True, cache=True)
def render_parallel(
    cars, track, cells, cell_offset, grid_shape, origin, inverse_resolution, forward, lateral, haze, shades, out
):
    """Each car's camera image (N, H, W, 3) uint8, rows on numba's threads."""
    height = forward.shape[0]
    for item in prange(cars.shape[0] * height):
        _render_row(
            item // height,
            item % height,
            cars,
            track,
            cells,
            cell_offset,
            grid_shape,
            origin,
            inverse_resolution,
            forward,
            lateral,
            haze,
            shades,
            out,
        )


@njit(cache=True)
def render_serial(
    cars, track, cells, cell_offset, grid_shape, origin, inverse_resolution, forward, lateral, haze, shades, out
):
    """``render_parallel`` on the calling thread."""
    height = forward.shape[0]
    for item in range(cars.shape[0] * height):
        _render_row(
            item // height,
            item % height,
            cars,
            track,
            cells,
            cell_offset,
            grid_shape,
            origin,
            inverse_resolution,
            forward,
            lateral,
            haze,
            shades,
            out,
        )


# NOTE: on the 2-core CI machine under load (load average 11) a parallel render of 64 64x64 frames took 1.5 ms and
# a serial one 0.5 ms (7.4 us a frame): threads help only when the machine has idle cores. So small batches
# always render on the calling thread, and large ones on whichever of the two ran faster per pixel in the last
# trial (3 calls each, repeated every TRIAL_EVERY calls). The outputs are identical either way.
PARALLEL_PIXELS = 4 * 64 * 64
TRIAL_EVERY, TRIAL_CALLS = 1000, 3


class _Threads:
    """Which renderer large batches use: "auto" (timed trials), "serial" or "parallel"."""

    def __init__(self) -> None:
        self.mode = os.environ.get("DEEPFUSE_RENDER_THREADS", "auto")
        self.calls, self.parallel = 0, True
        self.seconds = {True: [], False: []}

    def choose(self) -> bool:
        if self.mode != "auto":
            return self.mode == "parallel"
        phase = self.calls % TRIAL_EVERY
        self.calls += 1
        if phase < 2 * TRIAL_CALLS:
            return phase % 2 == 0
        if phase == 2 * TRIAL_CALLS:
            self.parallel = min(self.seconds[True]) <= min(self.seconds[False])
            self.seconds = {True: [], False: []}
        return self.parallel

    def record(self, parallel: bool, seconds_per_pixel: float) -> None:
        if self.mode == "auto" and len(self.seconds[parallel]) < TRIAL_CALLS:
            self.seconds[parallel].append(seconds_per_pixel)


THREADS = _Threads()


def set_render_threads(mode: str) -> None:
    """ "auto" (default; or the DEEPFUSE_RENDER_THREADS variable), "serial" or "parallel", for large batches."""
    if mode not in ("auto", "serial", "parallel"):
        raise ValueError(f"mode must be auto, serial or parallel, got {mode!r}")
    THREADS.mode, THREADS.calls, THREADS.seconds = mode, 0, {True: [], False: []}


def render(
    cars, track, cells, cell_offset, grid_shape, origin, inverse_resolution, forward, lateral, haze, shades, out
):
    """``_render`` on the calling thread or on numba's threads (see the note above)."""
    arguments = (
        cars,
        track,
        cells,
        cell_offset,
        grid_shape,
        origin,
        inverse_resolution,
        forward,
        lateral,
        haze,
        shades,
        out,
    )
    pixels = out.shape[0] * out.shape[1] * out.shape[2]
    if pixels <= PARALLEL_PIXELS or numba.get_num_threads() == 1:
        render_serial(*arguments)
        return
    parallel = THREADS.choose()
    start = time.perf_counter()
    (render_parallel if parallel else render_serial)(*arguments)
    THREADS.record(parallel, (time.perf_counter() - start) / pixels)


@njit(cache=True)
def expert_steer(cars, seg, track, lookahead_time, min_lookahead, points, cum, seglen, offset, count, length, out):
    """Pure pursuit on the true centreline: steer towards the centreline point ``max(min_lookahead,
    lookahead_time · v)`` metres of arc ahead of the car's projection (steering in [-1, 1], > 0 right)."""
    for i in range(cars.shape[0]):
        k = track[i]
        first, n = offset[k], count[k]
        target = (cars[i, S] + max(min_lookahead, lookahead_time * cars[i, SPEED])) % length[k]
        j = seg[i]
        for _ in range(n):  # walk forward (wrapping round) to the segment holding the target arc length
            if cum[first + j] <= target < cum[first + j] + seglen[first + j]:
                break
            j = (j + 1) % n
        t = (target - cum[first + j]) / seglen[first + j]
        nxt = first + (j + 1) % n
        tx = points[first + j, 0] + t * (points[nxt, 0] - points[first + j, 0])
        ty = points[first + j, 1] + t * (points[nxt, 1] - points[first + j, 1])
        dx, dy = tx - cars[i, X], ty - cars[i, Y]
        c, s = math.cos(cars[i, HEADING]), math.sin(cars[i, HEADING])
        ahead, left = c * dx + s * dy, -s * dx + c * dy
        angle = math.atan(2.0 * WHEELBASE * left / max(ahead * ahead + left * left, 1e-6))  # curvature 2 y / d²
        out[i] = min(max(-angle / MAX_STEER, -1.0), 1.0)
