"""FusedLinear: nn.Linear with the activation fused into the matmul (deepfuse.ops.linear_act)."""

from __future__ import annotations

import torch
from torch import nn

from deepfuse.ops.activations import check_activation
from deepfuse.ops.linear_act import linear_act


class FusedLinear(nn.Linear):
    """Drop-in for ``nn.Linear`` followed by an activation: same constructor arguments, parameters,
    initialisation and state_dict as nn.Linear, plus ``activation``.

    Input (..., in_features) -> output (..., out_features). The backend follows deepfuse's dispatch
    (``deepfuse.use_backend`` / ``DEEPFUSE_BACKEND`` / automatic).
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, activation: str = "none", device=None, dtype=None
    ) -> None:
        check_activation(activation)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear_act(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"

    @classmethod
    def from_torch(cls, linear: nn.Linear, activation: str = "none") -> FusedLinear:
        """A FusedLinear with a copy of ``linear``'s parameters, on its device and dtype."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        fused = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            activation=activation,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        fused.load_state_dict(linear.state_dict())
        fused.train(linear.training)
        return fused
