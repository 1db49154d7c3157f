"""ResidualBlock: ResNet's basic block on ConvBNAct, the skip's add and the activation fused into the second
convolution's epilogue (in eval, with BatchNorm folded in: one kernel)."""

from __future__ import annotations

import torch
from torch import nn

from deepfuse.nn.conv import ConvBNAct


class ResidualBlock(nn.Module):
    """``act(BN(conv3x3(act(BN(conv3x3(x))))) + shortcut(x))``; the shortcut is ``x``, or a 1x1 ConvBN when the
    stride or the width changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, stride, padding=1, activation=activation)
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, padding=1, activation=activation)
        changes = stride != 1 or in_channels != out_channels
        self.shortcut = ConvBNAct(in_channels, out_channels, 1, stride, activation="none") if changes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x), self.shortcut(x))
