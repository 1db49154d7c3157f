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


# sm_90: dynamic shared memory one block may opt in to (227 KiB).
MAX_SHARED_BYTES = 232_448


def shared_bytes_estimate(config: triton.Config, element_size: int, a_streams: int) -> int:
    """Shared memory of a config's pipelined operand tiles: num_stages copies of the A tile(s) (BLOCK_M x BLOCK_K;
    a_streams of them: backward kernels stream dy and the saved activation input) and the B tile (BLOCK_K x
    BLOCK_N). An upper bound of what Triton allocated for these kernels on sm_90 (tests/compile_gate checks it)."""
    block_m, block_n, block_k = (config.kwargs[name] for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * (a_streams * block_m + block_n) * block_k * element_size


def prune_configs(configs, named_args, **kwargs):
    """early_config_prune for the GEMM-shaped kernels, before the autotuner compiles anything: drops the configs
    whose tiles cannot fit a block's shared memory (a launch would fail with OutOfResources), and for IEEE fp32
    dots (FMAs, no tensor cores) the tiles too large for registers (over 16 accumulators per thread).

    NOTE: ptxas for sm_90 (tests/compile_gate; speed unmeasured): fp32 128x256x64 with 3 stages needs 294,912 B
    of shared memory, and 21 such fp32 configs of the three GEMM and three conv kernels could never launch. With
    IEEE fp32, every tile over 16 accumulators per thread spilled in some kernel (0.1-26 KB; e.g. linear 64x64x64
    on 4 warps 6.3 KB, 128x128x64 on 8 warps 8.8 KB, conv fwd 128x256x64 26 KB) and compiled in 5-40 s.
    """
    element_size = next(arg.element_size() for arg in named_args.values() if isinstance(arg, torch.Tensor))
    a_streams = 2 if named_args.get("saved_ptr") is not None and kwargs.get("ACTIVATION", 0) != 0 else 1
    fma = kwargs.get("DOT_PRECISION") == "ieee" and element_size == 4
    kept = []
    for config in configs:
        if shared_bytes_estimate(config, element_size, a_streams) > MAX_SHARED_BYTES:
            continue
        if fma and config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] > 16 * 32 * config.num_warps:
            continue
        kept.append(config)
    return kept


def gemm_autotune(key: list[str]):
    """@triton.autotune over GEMM_SHAPES for a GEMM-shaped kernel, pruned (prune_configs) before anything is
    compiled; the dot precision is part of the key (IEEE and TF32 keep their own choices)."""
    return triton.autotune(configs=autotune_configs(GEMM_SHAPES), key=[*key, "DOT_PRECISION"],
                           prune_configs_by={"early_config_prune": prune_configs})  # fmt: skip


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
