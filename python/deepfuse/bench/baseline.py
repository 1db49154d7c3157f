"""The plain-torch twin of a deepfuse model: the baseline every model benchmark measures deepfuse against.

The twin is the network a user would write without deepfuse — nn.Linear then the activation module, nn.Conv2d then
nn.BatchNorm2d then the activation, torch's nn.LSTM / nn.LSTMCell / nn.MultiheadAttention /
nn.TransformerEncoderLayer / nn.Dropout — holding a copy of the model's weights. A model whose forward reads packed
tokens through deepfuse's varlen attention (no plain-torch equivalent) runs its padded twin ``forward_padded`` (a
key-padding mask), which is what plain torch offers. ``plain_torch_twin`` refuses a model whose twin would still
call a deepfuse op, saying which.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from deepfuse import nn as dfnn
from deepfuse.ops.activations import activation_module


class LinearAct(nn.Linear):
    """nn.Linear then the activation module ``act``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(input))


class ConvAct(nn.Conv2d):
    """nn.Conv2d, then the residual and the activation module ``act``."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(input)
        return self.act(out if residual is None else out + residual)


class ConvBNAct(nn.Sequential):
    """nn.Conv2d, nn.BatchNorm2d (children 0 and 1, as deepfuse's ConvBNAct), then the residual and ``act``."""

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out = self[1](self[0](input))
        return self.act(out if residual is None else out + residual)


def _as_torch_class(module: nn.Module, torch_class: type, activation: str | None = None) -> nn.Module:
    """A copy of ``module`` (its parameters, buffers and settings) as ``torch_class``, with ``act`` when given."""
    twin = copy.deepcopy(module)
    twin.__class__ = torch_class
    if activation is not None:
        twin.act = activation_module(activation)
    return twin


def _twin_of(module: nn.Module) -> nn.Module | None:
    """The plain-torch replacement of one deepfuse layer, or None for any other module."""
    if isinstance(module, dfnn.FusedLinear):
        return _as_torch_class(module, LinearAct, module.activation)
    if isinstance(module, dfnn.ConvBNAct):
        return _as_torch_class(module, ConvBNAct, module.activation)
    if isinstance(module, dfnn.FusedConv2d):
        return _as_torch_class(module, ConvAct, module.activation)
    if isinstance(module, dfnn.TransformerEncoderLayer):
        twin = nn.TransformerEncoderLayer(
            module.linear1.in_features,
            module.self_attn.num_heads,
            module.linear1.out_features,
            module.dropout.p,
            activation_module(module.linear1.activation),
            module.norm1.eps,
            module.self_attn.batch_first,
            module.norm_first,
            module.linear1.bias is not None,
        )
        twin.load_state_dict(module.state_dict())
        twin.self_attn.dropout = module.self_attn.dropout
        return twin.to(module.linear1.weight.device, module.linear1.weight.dtype)
    if isinstance(module, nn.Dropout) and type(module) is not nn.Dropout:  # e.g. a model's own cheaper CPU masks
        return nn.Dropout(module.p, module.inplace)
    for deepfuse_class, torch_class in (
        (dfnn.MultiheadAttention, nn.MultiheadAttention),
        (dfnn.LSTM, nn.LSTM),
        (dfnn.LSTMCell, nn.LSTMCell),
    ):
        if isinstance(module, deepfuse_class):
            return _as_torch_class(module, torch_class)
    return None


def _replace_layers(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        twin = _twin_of(child)
        if twin is None:
            _replace_layers(child)
        else:
            weight = next(child.parameters(), None)
            setattr(parent, name, twin if weight is None else twin.to(weight.device))


class _DeepfuseOpSpy(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "deepfuse":
            self.seen.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


class NoPlainTwin(ValueError):
    """The model's plain-torch twin would still call deepfuse ops."""


def plain_torch_twin(model: nn.Module, example_inputs: tuple) -> nn.Module:
    """A copy of ``model`` built from plain torch modules with the same weights (see the module docstring);
    checked on ``example_inputs`` to call no deepfuse op. Raises NoPlainTwin otherwise."""
    twin = copy.deepcopy(model)
    _replace_layers(twin)
    if hasattr(twin, "forward_padded"):
        twin.forward = twin.forward_padded
    spy = _DeepfuseOpSpy()
    with torch.no_grad(), spy:
        twin.eval()(*example_inputs)
    twin.train(model.training)
    if spy.seen:
        raise NoPlainTwin(f"{type(model).__name__}'s plain-torch twin still calls {', '.join(sorted(spy.seen))}")
    return twin
