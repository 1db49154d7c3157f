"""Closed-loop driving: a pilot (a trained network, the expert, or a baseline: straight, constant, mean, random
steering) drives one car per track and the simulator scores it. A car has left the road when one of its wheels
has (``physics.WHEELS``: a 2.6 m wheelbase, 1.6 m track).

Metrics, over the tracks:
- ``mean_return``: the environment's return until the car first leaves the road (or the time budget ends),
  the number the gymnasium environments report for an episode;
- ``autonomy``: NVIDIA's PilotNet measure, 1 - interventions · 6 s / elapsed time, clipped at 0. When a car
  leaves the road it is put back on the centre line (an intervention) and drives on;
- ``rms_lateral_error_m``: root mean square distance of the car (the middle of its rear axle) from the centre
  line over the whole drive;
- ``mean_distance_m``: metres driven before the car first left the road (the whole drive when it never did);
- ``interventions``: per track, on average;
- ``laps``: laps of the track driven (progress along the centre line / track length), on average.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from deepfuse.envs import physics
from deepfuse.envs.camera import Camera
from deepfuse.envs.sim import Simulator
from deepfuse.envs.tracks import TrackSet

INTERVENTION_SECONDS = 6.0  # NVIDIA's penalty per intervention in the autonomy measure


@dataclass
class Pilot:
    """What drives: ``steer(images, sim) -> steering (N,)`` in [-1, 1]; ``images`` come from ``camera``
    (None: the pilot needs no images, as the expert, which reads the simulator's state)."""

    name: str
    camera: Camera | None
    steer: Callable[[np.ndarray | None, Simulator], np.ndarray]


def network_pilot(name: str, camera: Camera, model, to_input: Callable[[np.ndarray], object]) -> Pilot:
    """A network as the driver: ``to_input(images)`` -> the model's input (a CPU tensor); its first output
    column is the steering. Runs in eval mode without autograd and leaves the model's mode as it was."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def steer(images, sim):
        was_training = model.training
        model.eval()
        try:
            out = model(to_input(images).to(device)).float()
        finally:
            model.train(was_training)
        return out.reshape(out.shape[0], -1)[:, 0].cpu().numpy()

    return Pilot(name, camera, steer)


def expert_pilot() -> Pilot:
    return Pilot("expert", None, lambda images, sim: sim.expert())


def random_pilot(seed: int = 0) -> Pilot:
    """Steering drawn uniformly from [-1, 1] at every step."""
    rng = np.random.default_rng(seed)
    return Pilot("random", None, lambda images, sim: rng.uniform(-1.0, 1.0, sim.num_cars))


def constant_pilot(steering: float, name: str = "constant") -> Pilot:
    """The same steering at every step (0: straight ahead)."""
    return Pilot(name, None, lambda images, sim: np.full(sim.num_cars, float(steering)))


CONSTANT_STEERING = 0.1  # the constant pilot's command: a gentle right turn (2.5°), a typical |steering| on a bend


def baseline_pilots(mean_steering: float, seed: int = 0) -> list[Pilot]:
    """The pilots a trained one must beat: straight (0), constant (``CONSTANT_STEERING``), the mean steering of
    the training labels, uniform random."""
    return [
        constant_pilot(0.0, "straight"),
        constant_pilot(CONSTANT_STEERING),
        constant_pilot(mean_steering, "mean"),
        random_pilot(seed),
    ]


def drive(
    pilot: Pilot,
    tracks: TrackSet,
    steps: int = 1000,
    target_speed: float = 8.0,
    on_step: Callable[[Simulator, np.ndarray | None], None] | None = None,
) -> dict[str, float]:
    """Drive one car per track from its start (arc length 0, centred) for ``steps`` steps with the automatic
    throttle; ``on_step(sim, images)`` sees every step (the player records frames with it)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = len(tracks)
    cars = np.arange(n)
    sim = Simulator(n, tracks, max_steps=steps + 1, target_speed=target_speed)
    sim.place(cars, cars, 0.0)
    returns, first_exit = np.zeros(n), np.full(n, np.nan)
    interventions, distance, laps, squared_offset = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    for _ in range(steps):
        images = sim.render(pilot.camera) if pilot.camera is not None else None
        if on_step is not None:
            on_step(sim, images)
        steer = np.asarray(pilot.steer(images, sim), dtype=np.float64).reshape(n)
        before = sim.cars[:, physics.PROGRESS].copy()
        reward, left_road, _ = sim.step(steer)
        laps += (sim.cars[:, physics.PROGRESS] - before) / tracks.length
        distance += sim.cars[:, physics.SPEED] * physics.DT
        squared_offset += sim.cars[:, physics.OFFSET] ** 2
        clean = np.isnan(first_exit)
        returns += np.where(clean, reward, 0.0)
        first_exit[clean & left_road] = distance[clean & left_road]
        if left_road.any():
            off = np.flatnonzero(left_road)
            interventions[off] += 1
            sim.place(off, sim.track[off], sim.cars[off, physics.S], 0.0, 0.0, sim.cars[off, physics.SPEED])
    seconds = steps * physics.DT
    autonomy = np.clip(1.0 - interventions * INTERVENTION_SECONDS / seconds, 0.0, 1.0)
    return {
        "mean_return": float(returns.mean()),
        "autonomy": float(autonomy.mean()),
        "mean_distance_m": float(np.where(np.isnan(first_exit), distance, first_exit).mean()),
        "interventions": float(interventions.mean()),
        "rms_lateral_error_m": float(np.sqrt(squared_offset.mean() / steps)),
        "laps": float(laps.mean()),
    }
