"""The GEMM-shaped kernels' autotune configs (kernels/gemm_common.py): the pruning that runs before the autotuner
compiles anything. Whether what survives really fits is the compile gate's job (python -m tests.compile_gate);
these tests pin the rule to numbers ptxas reported for sm_90."""

import pytest
import torch
import triton

from deepfuse.kernels.gemm_common import (
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
    named_args = {"x_ptr": x, "w_desc": tensor_descriptor(x) if weight_by_tma else None, "KH": 3}
    if dw:
        named_args = {"dy_ptr": x, "saved_ptr": x, "x_ptr": x, "dw_ptr": x, "KH": 3}
    return [_shape(c) for c in prune_configs(CONFIGS, named_args, ACTIVATION=0, DOT_PRECISION=precision)]


def test_conv_keeps_the_tiles_whose_gathers_fit_registers():
    # ptxas for sm_90: the conv forward at fp16 128x256x64 w8 with the weight by TMA took 255 registers, spilled and
    # serialised its wgmmas (C7515); 128x128x64 w8 spilled 3.9-4.6 KB, 64x64x64 w4 none
    for weight_by_tma in (False, True):
        assert _conv_prune("fp16", weight_by_tma) == [(64, 64, 64, 4, 4), (64, 32, 32, 4, 5), (32, 64, 32, 4, 5)]
        assert _conv_prune("tf32", weight_by_tma) == [(64, 32, 32, 4, 5), (32, 64, 32, 4, 5)]
    # dW gathers its B tile: 16-bit 32x64x32 (16 gathered elements per thread) spilled 632 B, 64x32x32 (8) none
    assert _conv_prune("bf16", dw=True) == [(64, 32, 32, 4, 5)]
    # IEEE fp32 (FMA) gathers: 32x64 / 64x32 (16 accumulators per thread) spilled 0.4-1 KB; the 32x32 tile is theirs
    assert _conv_prune("fp32") == _conv_prune("fp32", dw=True) == [(32, 32, 32, 4, 3)]
    assert (32, 32, 32, 4, 3) not in map(_shape, _prune("fp32", False, 0))  # linear's FMA tiles are larger
    assert (32, 32, 32, 4, 3) not in map(_shape, _prune("bf16", False, 0))  # too small for the tensor cores


def test_tma_with_an_activation_gradient_prologue_drops_tiles_over_128x128():
    # ptxas for sm_90: linear dW with an activation at 16-bit 128x256x64 on 8 warps spilled 676 B
    x = torch.empty(4, 8, dtype=torch.float16)
    configs = [tma_config(shape, None) for shape in TMA_SHAPES]

    def kept(activation):
        named_args = {"dy_desc": tensor_descriptor(x), "saved_desc": tensor_descriptor(x)}
        pruned = prune_configs(configs, named_args, ACTIVATION=activation, DOT_PRECISION="ieee")
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in pruned}

    assert (128, 256) in kept(0) and (128, 256) not in kept(3)
    assert (128, 128) in kept(3)
