"""Fused ops. Each takes ``backend=None | "torch" | "triton" | "cuda"`` and has a plain-torch ``<op>_ref``."""

from deepfuse.ops.activations import ACTIVATIONS
from deepfuse.ops.attention import attention, attention_ref, attention_varlen
from deepfuse.ops.conv2d_act import conv2d_act, conv2d_act_ref
from deepfuse.ops.linear_act import linear_act, linear_act_ref
from deepfuse.ops.lstm import lstm_cell, lstm_cell_ref, lstm_layer

__all__ = [
    "ACTIVATIONS",
    "attention",
    "attention_ref",
    "attention_varlen",
    "conv2d_act",
    "conv2d_act_ref",
    "linear_act",
    "linear_act_ref",
    "lstm_cell",
    "lstm_cell_ref",
    "lstm_layer",
]
