"""The GEMM-shaped kernels' autotune configs (kernels/gemm_common.py): the pruning that runs before the autotuner
compiles anything. Whether what survives really fits is the compile gate's job (python -m tests.compile_gate);
these tests pin the rule to numbers ptxas reported for sm_90."""

import pytest
import torch
import triton

from deepfuse.kernels.gemm_common import (
    FALLBACK_SHAPE,
    GEMM_SHAPES,
    MAX_SHARED_BYTES,
    POINTER_TILE_REGISTERS,
    TMA_SHAPES,
    pointer_tile_registers,
    prune_configs,
    shared_bytes_estimate,
    tensor_descriptor,
    tma_config,
)

CONFIGS = [
    triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
    for m, n, k, w, s in GEMM_SHAPES
]
DTYPES = {
    "fp16": (torch.float16, "ieee"),
    "bf16": (torch.bfloat16, "ieee"),
    "fp32": (torch.float32, "ieee"),
    "tf32": (torch.float32, "tf32"),
}


def _prune(dtype_name, backward, activation):
    dtype, precision = DTYPES[dtype_name]
    tensor = torch.empty(4, dtype=dtype)
    named_args = {"dy_ptr": tensor, "saved_ptr": tensor} if backward else {"x_ptr": tensor}
    return prune_configs(CONFIGS, named_args, ACTIVATION=activation, DOT_PRECISION=precision)


def _shape(config):
    kw = config.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages)


@pytest.mark.parametrize("activation", [0, 3])
@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("dtype_name", DTYPES)
def test_pruned_configs_fit_and_leave_a_choice(dtype_name, backward, activation):
    kept = _prune(dtype_name, backward, activation)
    assert kept, "the autotuner needs at least one config"
    element = 2 if dtype_name in ("fp16", "bf16") else 4
    streams = 2 if backward and activation else 1
    assert all(shared_bytes_estimate(c, element, streams) <= MAX_SHARED_BYTES for c in kept)
    if dtype_name != "fp32":
        assert all(pointer_tile_registers(c, element, streams) <= POINTER_TILE_REGISTERS for c in kept)


def test_register_estimate_of_the_tiles_that_spilled():
    # ptxas for sm_90 (the compile gate's table): 16-bit 128x128x64 on 8 warps (64 accumulators + 32) spilled 324 B
    # in linear dW; TF32 64x64x64 on 4 warps (32 + 64) spilled 784 B in linear forward; 16-bit 64x64x64 (32 + 32)
    # spilled at most 148 B (under the gate's 256 B budget)
    assert pointer_tile_registers(CONFIGS[1], 2, 1) == 96 > POINTER_TILE_REGISTERS
    assert pointer_tile_registers(CONFIGS[5], 4, 1) == 96 > POINTER_TILE_REGISTERS
    assert pointer_tile_registers(CONFIGS[5], 2, 1) == 64 <= POINTER_TILE_REGISTERS
    assert _shape(CONFIGS[5]) == (64, 64, 64, 4, 4) and _shape(CONFIGS[1]) == (128, 128, 64, 8, 3)


def test_the_configs_that_cannot_launch_are_pruned():
    # ptxas for sm_90: fp32 (TF32) 128x256x64, 3 stages, needs 294,912 B in forward; fp16 147,456 B
    assert (128, 256, 64, 8, 3) not in map(_shape, _prune("tf32", False, 0))
    assert shared_bytes_estimate(CONFIGS[0], 2, 1) <= MAX_SHARED_BYTES  # fp16: it fits, but spills (see below)
    assert (128, 256, 64, 8, 3) not in map(_shape, _prune("fp16", False, 0))
    # backward with an activation streams dy and the saved input: TF32 dW 128x256x64 took 331,776 B, dx 128x64x64
    # with 4 stages 262,144 B (IEEE 278,528 B)
    tf32_backward = list(map(_shape, _prune("tf32", True, 3)))
    assert (128, 256, 64, 8, 3) not in tf32_backward and (128, 64, 64, 4, 4) not in tf32_backward


@pytest.mark.parametrize(
    "measured,shape,element,streams",
    [
        (147_456, (128, 256, 64, 8, 3), 2, 1),  # linear fwd fp16
        (294_912, (128, 256, 64, 8, 3), 4, 1),  # linear fwd tf32
        (331_776, (128, 256, 64, 8, 3), 4, 2),  # linear dW tf32
        (278_528, (128, 64, 64, 4, 4), 4, 2),  # linear dx / conv dW, IEEE fp32
        (229_888, (64, 128, 64, 4, 4), 4, 2),  # linear dW tf32
        (69_632, (32, 64, 32, 4, 5), 4, 2),  # linear dW, IEEE fp32
    ],
)
def test_estimate_bounds_what_triton_allocated(measured, shape, element, streams):
    """Shared memory Triton 3.6 allocated for sm_90 (the compile gate's table), never above the estimate."""
    m, n, k, w, s = shape
    config = triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
    assert shared_bytes_estimate(config, element, streams) >= measured


def test_ieee_fp32_keeps_only_tiles_that_fit_registers():
    # ptxas for sm_90: IEEE fp32 dots run on FMAs; 64x64 on 4 warps spilled 6,268 B, 32x64 / 64x32 none
    kept = list(map(_shape, _prune("fp32", False, 0)))
    assert kept == [(64, 32, 32, 4, 5), (32, 64, 32, 4, 5)]


def _conv_prune(dtype_name, weight_by_tma=False, dw=False):
    dtype, precision = DTYPES[dtype_name]
    x = torch.empty(4, 8, dtype=dtype)
    named_args = {"x_ptr": x, "w_desc": tensor_descriptor(x) if weight_by_tma else None}
    if dw:
        named_args = {"dy_ptr": x, "saved_ptr": x, "x_ptr": x, "dw_ptr": x}
    return [_shape(c) for c in prune_configs(CONFIGS, named_args, KH=3, ACTIVATION=0, DOT_PRECISION=precision)]


def test_conv_keeps_the_tiles_whose_gathers_fit_registers():
    # ptxas for sm_90: the conv forward at fp16 128x256x64 w8 with the weight by TMA took 255 registers, spilled and
    # serialised its wgmmas (C7515); 64x64x64 w4 spilled 260-980 B, 64x32x32 and 32x64x32 at most 12 B
    for weight_by_tma in (False, True):
        assert _conv_prune("fp16", weight_by_tma) == [(64, 32, 32, 4, 5), (32, 64, 32, 4, 5)]
    # dW gathers its B tile: 16-bit 32x64x32 (16 gathered elements per thread) spilled 632 B, 64x32x32 (8) none
    assert _conv_prune("bf16", dw=True) == [(64, 32, 32, 4, 5)]
    # IEEE fp32 (FMA) and TF32 gathers: 32x64 / 64x32 spilled 0.4-1.1 KB; only the fallback tile is left to them
    for dtype_name in ("fp32", "tf32"):
        assert _conv_prune(dtype_name) == _conv_prune(dtype_name, dw=True) == [FALLBACK_SHAPE]
    assert FALLBACK_SHAPE not in map(_shape, _prune("fp32", False, 0))  # linear keeps larger tiles
    assert FALLBACK_SHAPE not in map(_shape, _prune("bf16", True, 3))


def test_tf32_weight_gradient_keeps_32_row_tiles():
    # ptxas for sm_90: TF32 dW at 64x32x32 and 64x64x64 serialised its wgmmas (C7515): wgmma takes TF32 operands
    # K-major from shared memory only, and dW's A tile is dy transposed
    tensor = torch.empty(4, dtype=torch.float32)
    named_args = {"dy_ptr": tensor, "saved_ptr": tensor, "x_ptr": tensor, "dw_ptr": tensor}
    kept = prune_configs(CONFIGS, named_args, ACTIVATION=0, DOT_PRECISION="tf32")
    assert [_shape(c) for c in kept] == [(32, 64, 32, 4, 5)]


def test_tma_linear_kernels_keep_64_accumulators_per_thread_and_dw_its_dz_tile():
    # ptxas for sm_90: linear forward at 16-bit 128x256x64 on 8 warps spilled 324-452 B, 128x128x32 on 4 warps
    # 808 B (128 accumulators each); dW 128x64x64 on 4 warps 1,374 B (64 accumulators + 32 registers of dz)
    x = torch.empty(4, 8, dtype=torch.float16)
    configs = [tma_config(shape, None) for shape in TMA_SHAPES]

    def kept(named_args):
        pruned = prune_configs(configs, named_args, ACTIVATION=0, DOT_PRECISION="ieee")
        return {tuple(TMA_SHAPES[configs.index(c)]) for c in pruned}

    forward = kept({"x_desc": tensor_descriptor(x), "w_desc": tensor_descriptor(x)})
    dx = kept({"dy_desc": tensor_descriptor(x), "saved_desc": None, "w_desc": tensor_descriptor(x)})
    dw = kept({"dy_desc": tensor_descriptor(x), "saved_desc": None, "x_desc": tensor_descriptor(x), "dw_ptr": x})
    assert (128, 128, 64, 8, 3, False, False) in forward and (128, 128, 64, 4, 3, True, True) in forward
    assert not any(shape[:2] == (128, 256) for shape in forward | dx | dw)
    assert (128, 128, 32, 4, 4, False, False) not in forward | dx | dw
    assert (128, 64, 64, 4, 4, False, False) in dx and (128, 64, 64, 4, 4, False, False) not in dw
    assert (128, 128, 64, 8, 3, False, False) in dw and (64, 128, 64, 4, 4, False, False) in dw
