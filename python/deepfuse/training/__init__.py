"""The training engine shared by every model: ``train``, ``evaluate``, ``predict`` (see ``engine``)."""

from deepfuse.training.engine import RunError, evaluate, make_config, predict, train

__all__ = ["RunError", "evaluate", "make_config", "predict", "train"]
