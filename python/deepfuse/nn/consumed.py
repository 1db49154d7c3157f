"""Pass-through modules that hold the slot of a layer fused into the one before it (``deepfuse.patch``).

Inside an ``nn.Sequential``, Conv2d → BatchNorm2d → ReLU fused into one ``FusedConvBN2d`` leaves the BatchNorm and
the activation in their slots, so the state_dict keys and the module objects stay where they were; their own
forward passes the input through, because the convolution before them already applied them.
"""

from __future__ import annotations

import torch
from torch import nn


class ConsumedActivation(nn.Module):
    """The slot of an activation fused into the layer before it: passes its input through. Keeps the original
    module (not as a child: it has no state) so that ``unpatch`` puts it back."""

    def __init__(self, original: nn.Module, fused_into: str) -> None:
        super().__init__()
        object.__setattr__(self, "original", original)
        self.fused_into = fused_into

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input

    def extra_repr(self) -> str:
        return f"{self.original!r} fused into {self.fused_into!r}"


class ConsumedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d that the convolution before it (a ``FusedConvBN2d``) applies: its own forward passes the input
    through. ``FusedConvBN2d.bind_batch_norm`` switches the class of the existing instance, so its parameters,
    buffers, state_dict and identity stay; ``release`` switches it back."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fused into {self.__dict__.get('_deepfuse_fused_into', '?')!r}"

    @staticmethod
    def release(bn: ConsumedBatchNorm2d) -> nn.BatchNorm2d:
        """``bn`` as a plain nn.BatchNorm2d again (the same object), its forward its own."""
        bn.__class__ = nn.BatchNorm2d
        bn.__dict__.pop("_deepfuse_fused_into", None)
        return bn
