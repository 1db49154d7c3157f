"""The example models, one file each, and their registry.

``names()`` lists them; ``get(name)`` returns the model's ``Task`` (see ``deepfuse.training.task``): what the
training engine needs to build the network, read its data, compute its loss and metrics. Adding a model is one
file here that defines ``TASK`` (and a loader in ``deepfuse.data``); nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from deepfuse.training.task import Data, Option, Task

__all__ = ["Data", "Option", "Task", "get", "names", "unavailable"]

_NOT_MODELS = {"task"}
_tasks: dict[str, Task] = {}
_missing: dict[str, str] = {}  # model module -> the third-party package it needs and this machine lacks


def _discover() -> dict[str, Task]:
    if not _tasks:
        for module_info in pkgutil.iter_modules(__path__):
            if module_info.name in _NOT_MODELS or module_info.name.startswith("_"):
                continue
            try:
                module = importlib.import_module(f"{__name__}.{module_info.name}")
            except ModuleNotFoundError as error:
                if error.name is None or error.name.split(".")[0] == "deepfuse":
                    raise  # our own bug, not a missing optional package
                _missing[module_info.name] = error.name
                continue
            tasks = getattr(module, "TASKS", None) or [module.TASK]
            for task in tasks:
                if task.name in _tasks:
                    raise RuntimeError(f"two models are named {task.name!r}")
                _tasks[task.name] = task
    return _tasks


def names() -> list[str]:
    """The registered model names whose packages are installed here, sorted."""
    return sorted(_discover())


def unavailable() -> dict[str, str]:
    """Model files that could not load here, with the package each one needs."""
    _discover()
    return dict(_missing)


def get(name: str) -> Task:
    """The model called ``name``; a clear ValueError (the known names, or the missing package) otherwise."""
    tasks = _discover()
    if name not in tasks:
        module = name.replace("-", "_")
        if module in _missing:
            raise ValueError(
                f"model {name!r} needs the package {_missing[module]!r}, which is not installed here "
                "(pip install 'deepfuse[models]')"
            )
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(tasks))}")
    return tasks[name]
