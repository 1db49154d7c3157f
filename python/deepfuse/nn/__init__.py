"""Drop-in torch.nn modules built on deepfuse's fused ops."""

from deepfuse.nn.conv import ConvBNAct, FusedConv2d
from deepfuse.nn.linear import FusedLinear

__all__ = ["ConvBNAct", "FusedConv2d", "FusedLinear"]
