"""The training engine shared by every model: ``train``, ``evaluate_checkpoint``, ``predict_with_checkpoint``
(see ``engine``)."""

from deepfuse.training.engine import RunError, evaluate_checkpoint, make_config, predict_with_checkpoint, train

__all__ = ["RunError", "evaluate_checkpoint", "make_config", "predict_with_checkpoint", "train"]
