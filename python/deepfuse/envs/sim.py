"""``Simulator``: N cars on a set of tracks, stepped, rendered and driven by the expert in single compiled calls.

This is the engine under the gymnasium environments (``deepfuse.envs.env``), the recorder, the closed-loop
evaluation and the player. All of its state is a few numpy arrays (``state_dict``), so a run can save and
restore it exactly.
"""

from __future__ import annotations

import numpy as np

from deepfuse.envs import physics
from deepfuse.envs.camera import Camera, TopView
from deepfuse.envs.tracks import RESOLUTION, TrackSet

EXPERT_LOOKAHEAD_TIME, EXPERT_MIN_LOOKAHEAD = 0.9, 4.0  # s, m: the pure-pursuit target point's distance


def _car_column(column: int, doc: str) -> property:
    """A read-only property: a copy of one column of the cars' state (one value per car)."""
    return property(lambda self: self.cars[:, column].copy(), doc=doc)


class Simulator:
    """``num_cars`` cars on ``tracks``; each car drives on one track of the set (``track[i]``).

    ``target_speed`` (m/s) is what the automatic throttle holds and where cars start; ``max_steps`` truncates
    an episode. Starts: a random track of the set, a random point along it, up to ``start_offset`` metres off
    the centre line and ``start_heading`` radians off its direction.
    """

    def __init__(
        self,
        num_cars: int,
        tracks: TrackSet,
        *,
        max_steps: int = 1000,
        target_speed: float = 8.0,
        start_offset: float = 1.0,
        start_heading: float = 0.1,
    ) -> None:
        if num_cars < 1:
            raise ValueError(f"num_cars must be >= 1, got {num_cars}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not 0.0 < target_speed <= physics.MAX_SPEED:
            raise ValueError(f"target_speed must be in (0, {physics.MAX_SPEED}] m/s, got {target_speed}")
        self.tracks = tracks
        self.num_cars, self.max_steps, self.target_speed = num_cars, max_steps, float(target_speed)
        self.start_offset, self.start_heading = float(start_offset), float(start_heading)
        self.cars = np.zeros((num_cars, physics.STATE))
        self.seg = np.zeros(num_cars, dtype=np.int64)
        self.track = np.zeros(num_cars, dtype=np.int64)
        self.steps = np.zeros(num_cars, dtype=np.int64)
        self._tables: dict = {}

    # --- placing cars --------------------------------------------------------------------------------------------
    def place(self, cars, track, s, offset=0.0, heading_error=0.0, speed=None) -> None:
        """Put ``cars`` (indices) on ``track`` at arc length ``s``, ``offset`` metres left of the centre line,
        turned ``heading_error`` radians to the left; a new episode for each."""
        cars = np.atleast_1d(np.asarray(cars, dtype=np.int64))
        shape = cars.shape
        track = np.broadcast_to(np.asarray(track, dtype=np.int64), shape)
        s, offset, heading_error = (
            np.broadcast_to(np.asarray(a, dtype=np.float64), shape) for a in (s, offset, heading_error)
        )
        speed = np.broadcast_to(np.asarray(self.target_speed if speed is None else speed, dtype=np.float64), shape)
        if ((track < 0) | (track >= len(self.tracks))).any():
            raise ValueError(f"track indices must be in [0, {len(self.tracks)}), got {track.tolist()}")
        for k in np.unique(track):
            chosen = track == k
            one = self.tracks.tracks[k]
            x, y, heading, segment = one.pose(s[chosen], offset[chosen])
            rows = cars[chosen]
            self.cars[rows] = 0.0
            self.cars[rows, physics.X], self.cars[rows, physics.Y] = x, y
            self.cars[rows, physics.HEADING] = heading + heading_error[chosen]
            self.cars[rows, physics.SPEED] = speed[chosen]
            self.cars[rows, physics.S] = np.mod(s[chosen], one.length)
            self.cars[rows, physics.OFFSET] = offset[chosen]
            self.seg[rows] = segment
        self.track[cars] = track
        self.steps[cars] = 0
        physics.measure_wheels(self.cars, self.seg, self.track, *self._centre_lines())

    def reset(self, cars, rng: np.random.Generator) -> None:
        """Random starts for ``cars`` (indices), drawn from ``rng``."""
        cars = np.atleast_1d(np.asarray(cars, dtype=np.int64))
        n = len(cars)
        track = rng.integers(0, len(self.tracks), n)
        s = rng.uniform(0.0, 1.0, n) * self.tracks.length[track]
        offset = rng.uniform(-1.0, 1.0, n) * self.start_offset
        heading = rng.uniform(-1.0, 1.0, n) * self.start_heading
        self.place(cars, track, s, offset, heading)

    # --- stepping ---------------------------------------------------------------------------------------------
    def step(self, steer, throttle=None):
        """One time step of every car: ``steer`` (N,) in [-1, 1] (> 0 right), ``throttle`` (N,) in [-1, 1]
        (< 0 brakes) or None for the automatic throttle that holds ``target_speed``.
        Returns (reward, terminated, truncated), each (N,)."""
        steer = np.ascontiguousarray(steer, dtype=np.float64).reshape(self.num_cars)
        auto = throttle is None
        throttle = steer if auto else np.ascontiguousarray(throttle, dtype=np.float64).reshape(self.num_cars)
        reward = np.empty(self.num_cars)
        terminated = np.empty(self.num_cars, dtype=np.bool_)
        truncated = np.empty(self.num_cars, dtype=np.bool_)
        t = self.tracks
        physics.step(
            self.cars,
            self.seg,
            self.track,
            self.steps,
            steer,
            throttle,
            auto,
            self.target_speed,
            self.max_steps,
            *self._centre_lines(),
            t.length,
            t.half_width,
            reward,
            terminated,
            truncated,
        )
        return reward, terminated, truncated

    def _centre_lines(self) -> tuple:
        """The tracks' centre lines as physics' kernels take them: every track's points (concatenated), the arc
        length at each point, each segment's length, each track's first point and count of points."""
        t = self.tracks
        return t.points, t.cum, t.seglen, t.offset, t.count

    def expert(self) -> np.ndarray:
        """The pure-pursuit expert's steering for every car (N,)."""
        out = np.empty(self.num_cars)
        t = self.tracks
        physics.expert_steer(
            self.cars,
            self.seg,
            self.track,
            EXPERT_LOOKAHEAD_TIME,
            EXPERT_MIN_LOOKAHEAD,
            *self._centre_lines(),
            t.length,
            out,
        )
        return out

    # --- rendering --------------------------------------------------------------------------------------------
    def tables(self, camera: Camera | TopView):
        if camera not in self._tables:
            self._tables[camera] = camera.tables()
        return self._tables[camera]

    def render(self, camera: Camera | TopView, cars=None) -> np.ndarray:
        """Images (N, H, W, 3) uint8 from ``camera`` on every car (or on ``cars``, indices)."""
        forward, lateral, haze = self.tables(camera)
        state, track = (self.cars, self.track) if cars is None else (self.cars[cars], self.track[cars])
        out = np.empty((len(state), *forward.shape, 3), dtype=np.uint8)
        t = self.tracks
        physics.render(
            state,
            track,
            t.cells,
            t.cell_offset,
            t.grid_shape,
            t.origin,
            1.0 / RESOLUTION,
            forward,
            lateral,
            haze,
            physics.SHADES,
            out,
        )
        return out

    # --- what the cars are doing ------------------------------------------------------------------------------
    speed = _car_column(physics.SPEED, "Speed of each car, m/s.")
    offset = _car_column(physics.OFFSET, "Signed distance from the centre line, metres (> 0: left).")
    progress = _car_column(
        physics.PROGRESS, "Metres along the centre line since the episode began (negative when driving backwards)."
    )
    odometer = _car_column(physics.ODOMETER, "Metres driven since the episode began.")

    def on_road(self) -> np.ndarray:
        """Whether all four wheels of each car are on the road."""
        return self.cars[:, physics.WHEEL] <= self.tracks.half_width[self.track]

    def state_dict(self) -> dict:
        return {
            "cars": self.cars.copy(),
            "seg": self.seg.copy(),
            "track": self.track.copy(),
            "steps": self.steps.copy(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["cars"].shape[1:] != self.cars.shape[1:]:
            raise ValueError(
                f"a saved state with {state['cars'].shape[1]} numbers per car comes from another version "
                f"of the simulator (this one keeps {physics.STATE}: the wheels' column was added)"
            )
        if state["cars"].shape != self.cars.shape:
            raise ValueError(f"a saved state of {len(state['cars'])} cars cannot be loaded into {self.num_cars}")
        self.cars[:], self.seg[:], self.track[:], self.steps[:] = (state[k] for k in ("cars", "seg", "track", "steps"))
