"""Pieces shared by the Triton GEMM-shaped kernels (linear_act, conv2d_act): autotune configs, the dot
with its precision switches, tile ordering and the fused activation-gradient prologue."""

import os

import torch
import triton
import triton.language as tl

from .activations import activation_grad

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(block_shapes):
    """Autotune configs from (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); one small config
    when interpreting (the interpreter cannot autotune over several)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in block_shapes
    ]


# Standard Hopper-friendly GEMM tiles (Triton tutorial 03's set, plus 128x256 for large problems).
GEMM_SHAPES = [
    (128, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (64, 32, 32, 4, 5),
    (32, 64, 32, 4, 5),
]


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # The interpreter multiplies raw bf16 bits in tl.dot; upcasting there keeps results right.
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def grouped_tile(pid, num_rows, num_cols, GROUP: tl.constexpr):
    """Maps a linear program id to (row tile, column tile), GROUP row tiles at a time, for L2 reuse."""
    group_size = GROUP * num_cols
    group_id = pid // group_size
    first_row = group_id * GROUP
    rows_in_group = tl.minimum(num_rows - first_row, GROUP)
    row = first_row + (pid % group_size) % rows_in_group
    col = (pid % group_size) // rows_in_group
    return row, col


@triton.jit
def load_grad_preact(dy_ptr, saved_ptr, offsets, mask, ACTIVATION: tl.constexpr):
    """dz = dy * act'(saved) for one tile, rounded to the input dtype (as torch's unfused backward stores it)."""
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0)
    if ACTIVATION == 0:
        return dy
    saved = tl.load(saved_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return (dy.to(tl.float32) * activation_grad(saved, ACTIVATION)).to(dy.dtype)


def dot_flags(dtype: torch.dtype) -> dict:
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {"DOT_PRECISION": precision, "UPCAST_DOT": INTERPRET and dtype == torch.bfloat16}
