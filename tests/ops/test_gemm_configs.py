"""The GEMM-shaped kernels' autotune configs (kernels/gemm_common.py): the pruning that runs before the autotuner
compiles anything. Whether what survives really fits is the compile gate's job (python -m tests.compile_gate);
these tests pin the rule to numbers ptxas reported for sm_90."""

import pytest
import torch
import triton

from deepfuse.kernels.gemm_common import GEMM_SHAPES, MAX_SHARED_BYTES, prune_configs, shared_bytes_estimate

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
    if dtype_name in ("fp16", "bf16"):
        assert len(kept) == len(CONFIGS), "16-bit tiles all fit: nothing may be pruned"


def test_the_configs_that_cannot_launch_are_pruned():
    # ptxas for sm_90: fp32 (TF32) 128x256x64, 3 stages, needs 294,912 B in forward; fp16 147,456 B
    assert (128, 256, 64, 8, 3) not in map(_shape, _prune("tf32", False, 0))
    assert (128, 256, 64, 8, 3) in map(_shape, _prune("fp16", False, 0))
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


def test_conv_with_the_weight_by_tma_drops_tiles_over_128x128():
    # ptxas for sm_90: the conv forward at fp16 128x256x64 w8 with the weight by TMA took 255 registers, spilled and
    # serialised its wgmmas (C7515); the pointer-weight launch keeps its tiles for the autotuner
    from deepfuse.kernels.gemm_common import tensor_descriptor

    x = torch.empty(4, 8, dtype=torch.float16)
    by_tma = prune_configs(CONFIGS, {"x_ptr": x, "w_desc": tensor_descriptor(x)}, ACTIVATION=0, DOT_PRECISION="ieee")
    assert (128, 256, 64, 8, 3) not in map(_shape, by_tma)
    assert {_shape(c) for c in by_tma} == {_shape(c) for c in CONFIGS} - {(128, 256, 64, 8, 3)}
    by_pointer = prune_configs(CONFIGS, {"x_ptr": x, "w_desc": None}, ACTIVATION=0, DOT_PRECISION="ieee")
    assert (128, 256, 64, 8, 3) in map(_shape, by_pointer)
