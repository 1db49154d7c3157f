"""Activation names shared by every fused op, their torch reference and their derivative.

The order of ACTIVATIONS is the integer code the kernels use (kernels/activations.py, csrc/common.cuh).
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
# Backward needs z for these. relu and leaky_relu take their derivative from y = act(z) (its sign survives
# rounding), so forward stores nothing extra; sigmoid and tanh cannot: near saturation 1 - y is all rounding.
NEEDS_PREACTIVATION = frozenset({"gelu", "gelu_tanh", "silu", "sigmoid", "tanh"})
LEAKY_RELU_SLOPE = 0.01


def check_activation(activation: str) -> None:
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}, got {activation!r}")


def activation_ref(z: torch.Tensor, activation: str) -> torch.Tensor:
    """act(z) with torch's own functions (the numerical spec)."""
    if activation == "none":
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, LEAKY_RELU_SLOPE)
    if activation == "gelu":
        return F.gelu(z)
    if activation == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if activation == "silu":
        return F.silu(z)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    if activation == "tanh":
        return torch.tanh(z)
    check_activation(activation)
    raise AssertionError(activation)


def activation_grad_ref(saved: torch.Tensor, activation: str) -> torch.Tensor:
    """d act / d z from ``saved`` (z for NEEDS_PREACTIVATION, y = act(z) for relu/leaky_relu); mirrors the kernels."""
    if activation == "none":
        return torch.ones_like(saved)
    if activation == "relu":
        return (saved > 0).to(saved.dtype)
    if activation == "leaky_relu":
        return torch.where(saved > 0, torch.ones_like(saved), torch.full_like(saved, LEAKY_RELU_SLOPE))
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(saved * 0.7071067811865476))
        return cdf + saved * 0.3989422804014327 * torch.exp(-0.5 * saved * saved)
    if activation == "gelu_tanh":
        k = 0.7978845608028654
        t = torch.tanh(k * (saved + 0.044715 * saved**3))
        return 0.5 * (1.0 + t) + 0.5 * saved * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * saved * saved)
    if activation == "silu":
        s = torch.sigmoid(saved)
        return s * (1.0 + saved * (1.0 - s))
    if activation == "sigmoid":
        s = torch.sigmoid(saved)
        return s * (1.0 - s)
    if activation == "tanh":
        t = torch.tanh(saved)
        return 1.0 - t * t
    check_activation(activation)
    raise AssertionError(activation)


def activation_module(activation: str) -> torch.nn.Module:
    """The torch module a user would write for ``activation`` (nn.Identity for "none")."""
    check_activation(activation)
    modules = {
        "none": torch.nn.Identity,
        "relu": torch.nn.ReLU,
        "leaky_relu": lambda: torch.nn.LeakyReLU(LEAKY_RELU_SLOPE),
        "gelu": torch.nn.GELU,
        "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"),
        "silu": torch.nn.SiLU,
        "sigmoid": torch.nn.Sigmoid,
        "tanh": torch.nn.Tanh,
    }
    return modules[activation]()


def activation_name(activation) -> str | None:
    """deepfuse's name for a torch activation, or None where deepfuse has no kernel activation equal to it.

    ``activation``: a name nn.TransformerEncoderLayer takes ("relu", "gelu"; any name of ACTIVATIONS but "none"
    is returned as is), an activation module, or an activation function. Modules are matched by exact type (a
    subclass may override forward): nn.ReLU, nn.LeakyReLU with negative_slope 0.01, nn.GELU (approximate "none" →
    "gelu", "tanh" → "gelu_tanh"), nn.SiLU, nn.Sigmoid, nn.Tanh. Functions: F.relu / torch.relu, F.leaky_relu
    (its default slope is 0.01), F.gelu (erf), F.silu, F.sigmoid / torch.sigmoid, F.tanh / torch.tanh.
    nn.Identity is not mapped to "none": nothing needs fusing. The inverse of ``activation_module``.
    """
    if isinstance(activation, str):
        return activation if activation in ACTIVATION_CODES and activation != "none" else None
    kind = type(activation)
    if kind is torch.nn.LeakyReLU:
        return "leaky_relu" if activation.negative_slope == LEAKY_RELU_SLOPE else None
    if kind is torch.nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(activation.approximate)
    modules = {torch.nn.ReLU: "relu", torch.nn.SiLU: "silu", torch.nn.Sigmoid: "sigmoid", torch.nn.Tanh: "tanh"}
    if kind in modules:
        return modules[kind]
    functions = (
        (F.relu, "relu"),
        (torch.relu, "relu"),
        (F.leaky_relu, "leaky_relu"),
        (F.gelu, "gelu"),
        (F.silu, "silu"),
        (F.sigmoid, "sigmoid"),
        (torch.sigmoid, "sigmoid"),
        (F.tanh, "tanh"),
        (torch.tanh, "tanh"),
    )
    return next((name for function, name in functions if activation is function), None)
