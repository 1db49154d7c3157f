"""Fused ops. Each takes ``backend=None | "torch" | "triton" | "cuda"`` and has a plain-torch ``<op>_ref``."""

from deepfuse.ops.activations import ACTIVATIONS
from deepfuse.ops.linear_act import linear_act, linear_act_ref

__all__ = ["ACTIVATIONS", "linear_act", "linear_act_ref"]
