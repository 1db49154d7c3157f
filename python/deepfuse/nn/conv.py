"""FusedConv2d (nn.Conv2d + activation, BatchNorm folding), ConvBNAct (Conv2d → BatchNorm2d → activation) and
FusedConvBN2d (a Conv2d that applies the BatchNorm2d of the next slot of its nn.Sequential: ``deepfuse.patch``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepfuse.backend import backend_for
from deepfuse.nn.consumed import ConsumedBatchNorm2d
from deepfuse.ops.activations import activation_ref, check_activation
from deepfuse.ops.conv2d_act import conv2d_act


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """(weight, bias) of one convolution equal to conv → bn with bn's running statistics (eval mode).

    Computed in float32 at least, then cast back to weight's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn must track running statistics (track_running_stats=True) to be folded")
    if bn.num_features != weight.shape[0]:
        raise ValueError(f"bn has {bn.num_features} features but the convolution has {weight.shape[0]} out_channels")
    compute = torch.promote_types(weight.dtype, torch.float32)
    scale = torch.rsqrt(bn.running_var.to(compute) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(compute)
    shift = -bn.running_mean.to(compute) if bias is None else bias.to(compute) - bn.running_mean.to(compute)
    shift = shift * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(compute)
    return (weight.to(compute) * scale[:, None, None, None]).to(weight.dtype), shift.to(weight.dtype)


def _apply_padding_mode(conv: nn.Conv2d, input: torch.Tensor):
    """(input, padding) for conv2d_act: as nn.Conv2d, a padding_mode other than "zeros" pads with F.pad first
    (not fused) and then convolves without padding."""
    if conv.padding_mode == "zeros":
        return input, conv.padding
    return F.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0


class FusedConv2d(nn.Conv2d):
    """Drop-in for ``nn.Conv2d`` followed by an activation (same arguments, parameters, init and state_dict).

    Input (N, C_in, H, W) or (C_in, H, W), NCHW or channels_last; the output keeps the input's memory format.
    ``padding_mode`` other than "zeros" pads with ``F.pad`` first (unfused, as torch does), then convolves.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        activation: str = "none",
        device=None,
        dtype=None,
        padding_mode: str = "zeros",
    ) -> None:
        check_activation(activation)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self.activation = activation

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        input, padding = _apply_padding_mode(self, input)
        return conv2d_act(
            input,
            self.weight,
            self.bias,
            self.stride,
            padding,
            self.dilation,
            self.groups,
            self.activation,
            residual=residual,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation!r}"

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, activation: str = "none") -> FusedConv2d:
        """A FusedConv2d equal to ``conv`` (→ ``bn`` in eval mode, folded in) → activation."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        fused = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None or bn is not None,
            activation=activation,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            padding_mode=conv.padding_mode,
        )
        with torch.no_grad():
            weight, bias = (conv.weight, conv.bias) if bn is None else fold_batch_norm(conv.weight, conv.bias, bn)
            fused.weight.copy_(weight)
            if bias is not None:
                fused.bias.copy_(bias)
        return fused


class ConvBNAct(nn.Sequential):
    """Conv2d → BatchNorm2d → activation, with the state_dict of ``nn.Sequential(nn.Conv2d, nn.BatchNorm2d)``.

    Training: the convolution runs fused (bias), BatchNorm uses batch statistics, then the activation.
    Eval: BatchNorm's running statistics are folded into the convolution and the activation fused with it —
    one kernel. ``padding_mode`` as in FusedConv2d.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = False,
        activation: str = "relu",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        device=None,
        dtype=None,
        padding_mode: str = "zeros",
    ) -> None:
        check_activation(activation)
        factory = {"device": device, "dtype": dtype}
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, **factory
            ),
            nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum, **factory),
        )
        self.activation = activation

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``act(BN(conv(input)) [+ residual])``; in eval the residual and activation run in the folded
        convolution's epilogue (ResNet's block ending)."""
        conv, bn = self[0], self[1]
        input, padding = _apply_padding_mode(conv, input)
        geometry = (conv.stride, padding, conv.dilation, conv.groups)
        if self.training or bn.running_mean is None or self._unfolded_in_eval(input, conv, bn):
            normalised = bn(conv2d_act(input, conv.weight, conv.bias, *geometry))
            return activation_ref(normalised if residual is None else normalised + residual, self.activation)
        weight, bias = self._folded(conv, bn)
        return conv2d_act(input, weight, bias, *geometry, self.activation, residual=residual)

    @staticmethod
    def _unfolded_in_eval(input: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
        """On the torch backend with gradients flowing to the layer, eval runs conv then BatchNorm (its running
        statistics) as nn.Conv2d + nn.BatchNorm2d do: folding would only add its own ops to the graph there.
        NOTE: measured on the 2-core CPU (bench overhead, tiny ResidualBlock in eval, forward+backward): folding
        made the block 1.53x its plain-torch twin."""
        trained = conv.weight.requires_grad or (bn.weight is not None and bn.weight.requires_grad)
        if not (torch.is_grad_enabled() and trained):
            return False
        return backend_for("conv2d_act", None, input, conv.weight) == "torch"

    def _folded(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded (weight, bias), kept between calls while no gradient flows to them and none of the tensors
        they come from changed (same tensors, same version counters: an optimizer step, load_state_dict or .to()
        refolds)."""
        sources = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources)
        ):
            return fold_batch_norm(conv.weight, conv.bias, bn)
        # NOTE: measured on the 2-core CPU (bench overhead, tiny ResidualBlock in eval): folding on every call made
        # the block 1.7x its plain-torch twin (conv, BN, ReLU); the fold is six small ops per convolution.
        key = (bn.eps, *((id(t), t._version) if t is not None else None for t in sources))
        cached = self.__dict__.get("_fold_cache")
        if cached is None or cached[0] != key:
            cached = (key, fold_batch_norm(conv.weight, conv.bias, bn))
            self.__dict__["_fold_cache"] = cached
        return cached[1]

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class FusedConvBN2d(FusedConv2d):
    """A FusedConv2d that also applies the BatchNorm2d of the next slot of its nn.Sequential, then the activation:
    what ``deepfuse.patch`` puts in place of Conv2d → BatchNorm2d [→ activation] inside an nn.Sequential, keeping
    the state_dict's keys where they were.

    The BatchNorm is read from that slot at every call (not owned: its state_dict keys stay where they were); bind
    it with ``bind_batch_norm(parent, key)``. It follows BatchNorm's own training flag, as torch does (so a frozen
    BN — ``bn.eval()`` in a training model — folds): batch statistics → convolution fused with its bias, torch's
    BatchNorm forward (running statistics updated as torch's), activation; running statistics → BN folded into the
    weights, one fused convolution with the activation. Arguments and state_dict as FusedConv2d's.
    """

    def bind_batch_norm(self, parent: nn.Module, key: str, fused_into: str = "") -> None:
        """Apply the nn.BatchNorm2d in slot ``key`` of ``parent`` (the Sequential holding this convolution); that
        BatchNorm becomes a ConsumedBatchNorm2d (same object, parameters and buffers) whose own forward passes its
        input through. ``fused_into`` names this convolution in the BatchNorm's repr."""
        bn = parent._modules.get(key)
        if type(bn) is not nn.BatchNorm2d:
            raise TypeError(f"slot {key!r} of the parent must hold an nn.BatchNorm2d, got {type(bn).__name__}")
        object.__setattr__(self, "_bn_parent", parent)  # not a child: the BN's keys stay in its own slot
        self._bn_key = key
        bn.__class__ = ConsumedBatchNorm2d
        bn._deepfuse_fused_into = fused_into

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        parent = self.__dict__.get("_bn_parent")
        if parent is None:
            raise RuntimeError("FusedConvBN2d has no BatchNorm2d bound: call bind_batch_norm(parent, key) first")
        bn = parent._modules[self._bn_key]
        if type(bn) is not ConsumedBatchNorm2d:
            raise RuntimeError(
                f"the BatchNorm2d that deepfuse.patch fused into this convolution is no longer in slot "
                f"{self._bn_key!r} of its nn.Sequential (found {type(bn).__name__}; replaced after patching, e.g. "
                f"by nn.SyncBatchNorm.convert_sync_batchnorm?): call deepfuse.unpatch(model), change it, then patch"
            )
        input, padding = _apply_padding_mode(self, input)
        geometry = (self.stride, padding, self.dilation, self.groups)
        if bn.training or (bn.running_mean is None and bn.running_var is None):
            normalized = nn.BatchNorm2d.forward(bn, conv2d_act(input, self.weight, self.bias, *geometry))
            return activation_ref(normalized, self.activation)
        weight, bias = fold_batch_norm(self.weight, self.bias, bn)
        return conv2d_act(input, weight, bias, *geometry, self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch_norm=slot {self.__dict__.get('_bn_key', '?')!r}"
