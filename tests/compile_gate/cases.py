"""The calls the gate makes: every public op with GPU settings, in every dtype (fp32 with and without TF32,
as torch.backends.cuda.matmul.allow_tf32 says), forward and backward, at sizes of 1, unaligned and aligned
sizes (Triton specialises an int equal to 1 into a constant and marks 16-divisible ones), strided inputs.

A case is a function of the dtype; it calls the public op on CPU tensors and runs backward where the op has
one. The kernels do not run (the gate records their launches), so values are whatever torch.empty holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

import deepfuse

# name -> (torch dtype, torch.backends.cuda.matmul.allow_tf32)
DTYPES = {
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
}
ACTIVATIONS = deepfuse.ops.ACTIVATIONS


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[torch.dtype], None]


@contextlib.contextmanager
def tf32(allowed: bool):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _leaf(*shape, dtype, grad=True):
    return torch.randn(*shape).to(dtype).requires_grad_(grad)


def _backward(*outputs):
    """Backward through every output with a ones gradient (the values do not matter: nothing runs)."""
    torch.autograd.backward([o for o in outputs], [torch.ones_like(o) for o in outputs])


# ---------------------------------------------------------------------------------------------
# linear_act
# ---------------------------------------------------------------------------------------------


def _linear(M, K, N, activation="gelu", bias=True, transposed_x=False, grad=True):
    def run(dtype):
        x = _leaf(K, M, dtype=dtype, grad=grad).t() if transposed_x else _leaf(M, K, dtype=dtype, grad=grad)
        w = _leaf(N, K, dtype=dtype, grad=grad)
        b = _leaf(N, dtype=dtype, grad=grad) if bias else None
        y = deepfuse.ops.linear_act(x, w, b, activation, backend="triton")
        if grad:
            _backward(y)

    return run


LINEAR = [
    Case("linear 1x1x1", _linear(1, 1, 1)),
    Case("linear batch1 33->17", _linear(1, 33, 17)),
    Case("linear 5x33->17 odd", _linear(5, 33, 17)),
    Case("linear 64x128->256", _linear(64, 128, 256)),
    Case("linear 48x64->1", _linear(48, 64, 1, bias=False)),
    Case("linear 7x1->32", _linear(7, 1, 32)),
    Case("linear transposed x", _linear(40, 48, 24, transposed_x=True)),
    Case("linear inference", _linear(64, 128, 256, grad=False)),
    *(Case(f"linear {act}", _linear(32, 64, 48, activation=act)) for act in ACTIVATIONS),
    Case("linear no bias relu", _linear(32, 64, 48, activation="relu", bias=False)),
]

# ---------------------------------------------------------------------------------------------
# conv2d_act
# ---------------------------------------------------------------------------------------------


def _conv(
    batch,
    cin,
    hw,
    cout,
    k,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    activation="relu",
    bias=True,
    residual=False,
    channels_last=False,
    grad=True,
):
    def run(dtype):
        x = torch.randn(batch, cin, hw, hw + 1).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        x.requires_grad_(grad)
        w = _leaf(cout, cin // groups, k, k, dtype=dtype, grad=grad)
        b = _leaf(cout, dtype=dtype, grad=grad) if bias else None
        out_hw = (
            (hw + 2 * padding - dilation * (k - 1) - 1) // stride + 1,
            (hw + 1 + 2 * padding - dilation * (k - 1) - 1) // stride + 1,
        )
        res = _leaf(batch, cout, *out_hw, dtype=dtype, grad=grad) if residual else None
        y = deepfuse.ops.conv2d_act(
            x, w, b, stride, padding, dilation, groups, activation, residual=res, backend="triton"
        )
        if grad:
            _backward(y)

    return run


CONV = [
    Case("conv batch1 1x1 1ch", _conv(1, 1, 1, 1, 1)),
    Case("conv 3x3 pad1", _conv(2, 16, 8, 32, 3, padding=1)),
    Case("conv 3x3 stride2 odd channels", _conv(2, 3, 9, 17, 3, stride=2, padding=1, activation="gelu")),
    Case("conv 5x5 dilation2 no bias", _conv(1, 8, 11, 8, 5, dilation=2, padding=4, bias=False, activation="silu")),
    Case("conv depthwise", _conv(2, 32, 8, 32, 3, padding=1, groups=32)),
    Case("conv grouped residual", _conv(2, 16, 6, 32, 3, padding=1, groups=4, residual=True)),
    Case("conv 1x1 channels_last", _conv(4, 64, 7, 128, 1, channels_last=True, activation="none")),
    Case("conv channels_last 3x3", _conv(2, 24, 8, 40, 3, padding=1, channels_last=True, activation="tanh")),
    Case("conv inference", _conv(2, 16, 8, 32, 3, padding=1, grad=False)),
]

# ---------------------------------------------------------------------------------------------
# attention and attention_varlen
# ---------------------------------------------------------------------------------------------


def _attention(B, Hq, Hkv, Nq, Nk, D, causal=False, mask=False, grad=True):
    def run(dtype):
        q = _leaf(B, Hq, Nq, D, dtype=dtype, grad=grad)
        k = _leaf(B, Hkv, Nk, D, dtype=dtype, grad=grad)
        v = _leaf(B, Hkv, Nk, D, dtype=dtype, grad=grad)
        pad = None
        if mask:
            pad = torch.zeros(B, Nk, dtype=torch.bool)
            pad[:, Nk // 2 :] = True
        out = deepfuse.ops.attention(q, k, v, causal=causal, key_padding_mask=pad, backend="triton")
        if grad:
            _backward(out)

    return run


def _varlen(lengths, Hq, Hkv, D, causal=False):
    def run(dtype):
        total = sum(lengths)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        q = _leaf(total, Hq, D, dtype=dtype)
        k = _leaf(total, Hkv, D, dtype=dtype)
        v = _leaf(total, Hkv, D, dtype=dtype)
        out = deepfuse.ops.attention_varlen(
            q, k, v, cu, cu, max(lengths), max(lengths), causal=causal, backend="triton"
        )
        _backward(out)

    return run


ATTENTION = [
    Case("attention B1 H1 N1 D1", _attention(1, 1, 1, 1, 1, 1)),
    *(Case(f"attention D{D}", _attention(2, 2, 2, 77, 77, D)) for D in (16, 32, 48, 64, 96, 128, 160, 256)),
    Case("attention causal gqa D64", _attention(2, 4, 2, 100, 100, 64, causal=True)),
    Case("attention causal D256", _attention(1, 2, 1, 64, 64, 256, causal=True)),
    Case("attention mask mqa D128", _attention(2, 4, 1, 33, 48, 128, mask=True)),
    Case("attention causal mask Nq1", _attention(3, 2, 2, 1, 130, 64, causal=True, mask=True)),
    Case("attention inference D128", _attention(2, 2, 2, 128, 128, 128, grad=False)),
    Case("varlen D64", _varlen([5, 1, 70], 4, 2, 64)),
    Case("varlen causal D128", _varlen([33, 64], 2, 2, 128, causal=True)),
    Case("varlen one token D256", _varlen([1], 1, 1, 256)),
]

# ---------------------------------------------------------------------------------------------
# lstm_cell and lstm_layer
# ---------------------------------------------------------------------------------------------


def _cell(B, IN, H, bias=True):
    def run(dtype):
        x, h, c = _leaf(B, IN, dtype=dtype), _leaf(B, H, dtype=dtype), _leaf(B, H, dtype=dtype)
        w_ih, w_hh = _leaf(4 * H, IN, dtype=dtype), _leaf(4 * H, H, dtype=dtype)
        b_ih, b_hh = (_leaf(4 * H, dtype=dtype), _leaf(4 * H, dtype=dtype)) if bias else (None, None)
        _backward(*deepfuse.ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, backend="triton"))

    return run


def _layer(T, B, IN, H, lengths=False, grad=True):
    def run(dtype):
        x = _leaf(T, B, IN, dtype=dtype, grad=grad)
        h0, c0 = _leaf(B, H, dtype=dtype, grad=grad), _leaf(B, H, dtype=dtype, grad=grad)
        w_ih, w_hh = _leaf(4 * H, IN, dtype=dtype, grad=grad), _leaf(4 * H, H, dtype=dtype, grad=grad)
        b_ih, b_hh = _leaf(4 * H, dtype=dtype, grad=grad), _leaf(4 * H, dtype=dtype, grad=grad)
        lens = torch.tensor([max(T - i, 1) for i in range(B)], dtype=torch.int64) if lengths else None
        out, h_n, c_n = deepfuse.ops.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lens, backend="triton")
        if grad:
            _backward(out, h_n, c_n)

    return run


# Hidden sizes at the layout boundaries of kernels/lstm.py: single slice (fp16/bf16 <= 64, fp32 <= 32), 16-unit
# slices up to the persistent limit (fp16/bf16 512, fp32 128), the per-step path past it.
LSTM = [
    Case("lstm_cell B1 IN1 H1", _cell(1, 1, 1)),
    Case("lstm_cell 5x33 H20 no bias", _cell(5, 33, 20, bias=False)),
    Case("lstm_cell 64x128 H256", _cell(64, 128, 256)),
    Case("lstm_layer T1 B1 H1", _layer(1, 1, 1, 1)),
    Case("lstm_layer B1 H64 single slice", _layer(6, 1, 16, 64)),
    Case("lstm_layer B3 H20 lengths", _layer(7, 3, 9, 20, lengths=True)),
    Case("lstm_layer B1 H128 slices", _layer(5, 1, 32, 128)),
    Case("lstm_layer B64 H256", _layer(4, 64, 64, 256, lengths=True)),
    Case("lstm_layer B17 H512", _layer(3, 17, 32, 512)),
    Case("lstm_layer per-step H600", _layer(3, 5, 16, 600, lengths=True)),
    Case("lstm_layer per-step B1 H1024", _layer(2, 1, 16, 1024)),
    Case("lstm_layer inference B1 H64", _layer(5, 1, 16, 64, grad=False)),
    Case("lstm_layer inference H256 lengths", _layer(5, 9, 16, 256, lengths=True, grad=False)),
    Case("lstm_layer inference per-step H600", _layer(3, 2, 16, 600, grad=False)),
]

CASES = {"linear_act": LINEAR, "conv2d_act": CONV, "attention": ATTENTION, "lstm": LSTM}
