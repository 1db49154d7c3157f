"""A small, fast driving simulator on the CPU (numba): procedurally generated closed tracks, a kinematic bicycle
car, a forward-looking camera rendered from a raster of the ground, N cars stepped and rendered in one compiled
call — behind gymnasium's API, with a pure-pursuit expert, a recorder of Udacity-format driving logs, a player
that writes GIFs (its benchmark of rendered steps per second is deepfuse.bench.simulator).

    import gymnasium as gym
    env = gym.make("deepfuse.envs:deepfuse/Drive-v0")            # one car, 64x64 camera
    from deepfuse.envs import DriveVectorEnv
    envs = DriveVectorEnv(num_envs=64, image_size=64)           # 64 cars, one compiled step and render each

The classes load numba on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib

import gymnasium

ENV_ID = "deepfuse/Drive-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="deepfuse.envs.env:DriveEnv")

_LAZY = {
    "DriveEnv": "deepfuse.envs.env",
    "DriveVectorEnv": "deepfuse.envs.env",
    "Simulator": "deepfuse.envs.sim",
    "TrackSet": "deepfuse.envs.tracks",
    "make_track": "deepfuse.envs.tracks",
    "Camera": "deepfuse.envs.camera",
    "TopView": "deepfuse.envs.camera",
}

__all__ = ["ENV_ID", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
