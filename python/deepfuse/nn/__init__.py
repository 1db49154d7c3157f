"""Drop-in torch.nn modules built on deepfuse's fused ops."""

from deepfuse.nn.attention import MultiheadAttention, TransformerEncoderLayer
from deepfuse.nn.conv import ConvBNAct, FusedConv2d
from deepfuse.nn.linear import FusedLinear

__all__ = ["ConvBNAct", "FusedConv2d", "FusedLinear", "MultiheadAttention", "TransformerEncoderLayer"]
