"""Activation functions shared by every Triton kernel: the forward map and its derivative.

Codes follow ``deepfuse.ops.activations.ACTIVATIONS`` (and csrc/common.cuh). Only interpreter-safe
primitives are used (no libdevice): tanh(x) = 2 * sigmoid(2x) - 1.
"""

import triton
import triton.language as tl

NONE: tl.constexpr = tl.constexpr(0)
RELU: tl.constexpr = tl.constexpr(1)
LEAKY_RELU: tl.constexpr = tl.constexpr(2)
GELU: tl.constexpr = tl.constexpr(3)
GELU_TANH: tl.constexpr = tl.constexpr(4)
SILU: tl.constexpr = tl.constexpr(5)
SIGMOID: tl.constexpr = tl.constexpr(6)
TANH: tl.constexpr = tl.constexpr(7)

LEAKY_RELU_SLOPE: tl.constexpr = tl.constexpr(0.01)
SQRT_2_OVER_PI: tl.constexpr = tl.constexpr(0.7978845608028654)
INV_SQRT_2: tl.constexpr = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI: tl.constexpr = tl.constexpr(0.3989422804014327)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def apply_activation(z, ACTIVATION: tl.constexpr):
    """act(z) for an fp32 block."""
    if ACTIVATION == RELU:
        return tl.maximum(z, 0.0)
    elif ACTIVATION == LEAKY_RELU:
        return tl.where(z > 0.0, z, z * LEAKY_RELU_SLOPE)
    elif ACTIVATION == GELU:
        return 0.5 * z * (1.0 + tl.erf(z * INV_SQRT_2))
    elif ACTIVATION == GELU_TANH:
        return 0.5 * z * (1.0 + _tanh(SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)))
    elif ACTIVATION == SILU:
        return z * tl.sigmoid(z)
    elif ACTIVATION == SIGMOID:
        return tl.sigmoid(z)
    elif ACTIVATION == TANH:
        return _tanh(z)
    else:
        return z


@triton.jit
def activation_grad(saved, ACTIVATION: tl.constexpr):
    """d act / d z for an fp32 block; ``saved`` is z, except relu/leaky_relu, which take y = act(z)."""
    if ACTIVATION == RELU:
        return tl.where(saved > 0.0, 1.0, 0.0)
    elif ACTIVATION == LEAKY_RELU:
        return tl.where(saved > 0.0, 1.0, LEAKY_RELU_SLOPE)
    elif ACTIVATION == GELU:
        return 0.5 * (1.0 + tl.erf(saved * INV_SQRT_2)) + saved * INV_SQRT_2PI * tl.exp(-0.5 * saved * saved)
    elif ACTIVATION == GELU_TANH:
        t = _tanh(SQRT_2_OVER_PI * (saved + 0.044715 * saved * saved * saved))
        return 0.5 * (1.0 + t) + 0.5 * saved * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * saved * saved)
    elif ACTIVATION == SILU:
        s = tl.sigmoid(saved)
        return s * (1.0 + saved * (1.0 - s))
    elif ACTIVATION == SIGMOID:
        s = tl.sigmoid(saved)
        return s * (1.0 - s)
    elif ACTIVATION == TANH:
        t = _tanh(saved)
        return 1.0 - t * t
    else:
        return tl.full(saved.shape, 1.0, tl.float32)
