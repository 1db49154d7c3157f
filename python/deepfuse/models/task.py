"""Moved: the Task contract lives in ``deepfuse.training.task`` (the engine owns it; models build on it).

Kept so that ``from deepfuse.models.task import Task`` in user code still works. Checkpoints hold no class from here
(tests/training/test_import_layers.py checks a checkpoint's pickle names no deepfuse class).
"""

from deepfuse.training.task import Data, Option, Task

__all__ = ["Data", "Option", "Task"]
