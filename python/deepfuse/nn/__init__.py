"""Drop-in torch.nn modules built on deepfuse's fused ops."""

from deepfuse.nn.linear import FusedLinear

__all__ = ["FusedLinear"]
