"""conv2d_act's Triton kernels as Hopper variants: one program per tile and persistent (a program per SM looping
over every group's tiles), the weight (forward, dx) and dy (dW) by TMA or through pointers, each forced by
``config=`` and run through the interpreter against the float64 specification (forward, dx, dW, db, d(residual)).
On the CPU the persistent grid is 3 programs (gemm_common.num_sms), so each program runs several tiles of several
groups. Whether they compile to wgmma + TMA on sm_90 is the compile gate's check; why there is no warp-specialised
variant is gemm_common.CONV_HOPPER_SHAPES' note."""

import functools

import pytest
import torch
import triton

from deepfuse.kernels import conv2d_act as kernels
from deepfuse.kernels.gemm_common import (
    CONV_HOPPER_SHAPES,
    FALLBACK_SHAPE,
    GEMM_SHAPES,
    POINTWISE_SHAPES,
    prune_conv_configs,
    tensor_descriptor,
    tma_config,
)
from tests.ops.test_conv2d_act import check_case

# (weight, config): the weight by TMA ("tma") or through pointers ("pointer"), and a config row (BLOCK_M, BLOCK_N,
# BLOCK_K, num_warps, num_stages, PERSISTENT, WARP_SPECIALIZE) with interpreter-sized tiles. The plain kernel with
# the weight through pointers is what tests/ops/test_conv2d_act.py runs.
VARIANTS = {
    "plain_tma": ("tma", (32, 32, 32, 4, 1, False, False)),
    "persistent_tma": ("tma", (32, 32, 32, 4, 1, True, False)),
    "persistent_pointer": ("pointer", (32, 32, 32, 4, 1, True, False)),
}
# (batch, C_in, H, W, C_out, kernel, stride, padding, dilation, groups, activation, channels_last, residual):
# more tiles than the 3 persistent programs, in every case; channels_last with input and output channels multiples
# of 8 (TMA's 16-byte rows in fp16); odd pixel counts, 8 output channels per group (dW's dy tile reads the next
# group's channels, which it must not store), 2 output-channel tiles, 3 input-channel tiles.
CASES = {
    "grouped_3x3_residual": (2, 16, 9, 11, 16, 3, 1, 1, 1, 2, "relu", True, True),
    "stride2_dilated_gelu": (3, 8, 13, 10, 40, 3, 2, 2, 2, 1, "gelu", True, False),
    "1x1_channels_last_silu": (2, 72, 7, 9, 40, 1, 1, 0, 1, 1, "silu", True, False),
    "pointwise_grouped_residual": (2, 32, 7, 9, 80, 1, 1, 0, 1, 2, "gelu", True, True),
}
# Pointwise (1x1, stride 1, no padding, channels_last): the forward takes x by TMA too, and warp-specialised configs.
POINTWISE = ("1x1_channels_last_silu", "pointwise_grouped_residual")


@pytest.fixture
def forced(monkeypatch):
    """force(variant, config, launchers): the op's Triton launchers (both, or those named) run ``config`` (a VARIANTS
    row) with the weight and dy by TMA ("tma") or through pointers ("pointer"), the others autotune as usual; returns
    the (kernel, programs, tiles, by TMA, x by TMA) they launched (programs and tiles None where autotuned)."""
    launched = []
    launch = kernels.launch_tma

    def spy(kernel, grid, args, kwargs, config):
        programs = tiles = None
        if config is not None:
            meta = dict(zip(("BLOCK_M", "BLOCK_N", "PERSISTENT"), (config[0], config[1], config[5]), strict=True))
            programs = grid(meta)[0]
            tiles = grid({**meta, "PERSISTENT": False})[0]
        by_tma = kwargs.get("W_TMA", kwargs.get("DY_TMA"))
        launched.append((kernel.fn.fn.__name__, programs, tiles, by_tma, kwargs.get("X_TMA", False)))
        launch(kernel, grid, args, kwargs, config)

    def force(variant, config, launchers=("conv2d_act_fwd", "conv2d_act_bwd")):
        monkeypatch.setattr(kernels, "launch_tma", spy)
        for name in launchers:
            launcher = getattr(kernels, name)
            monkeypatch.setattr(kernels, name, functools.partial(launcher, variant=variant, config=config))
        return launched

    return force


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize(("dtype", "tf32"), [(torch.float16, False), (torch.float32, True)], ids=["fp16", "tf32"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_matches_reference(variant, dtype, tf32, case, forced, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)  # the interpreter computes fp32 dots exactly
    weight, config = VARIANTS[variant]
    launched = forced(weight, config)
    check_case("triton", case, dtype)
    kernel_names = ["_conv2d_act_fwd_kernel", "_conv2d_act_bwd_dx_kernel", "_conv2d_act_bwd_dw_kernel"]
    assert [name for name, *_ in launched] == kernel_names
    for name, programs, tiles, by_tma, x_by_tma in launched:
        assert by_tma == (weight == "tma")
        assert x_by_tma == (by_tma and name == "_conv2d_act_fwd_kernel" and case in map(CASES.get, POINTWISE))
        assert tiles > 3
        assert programs == (3 if config[5] else tiles)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("name", POINTWISE)
@pytest.mark.parametrize(("dtype", "tf32"), [(torch.float16, False), (torch.float32, True)], ids=["fp16", "tf32"])
def test_pointwise_warp_specialised_config_matches_reference(name, dtype, tf32, forced, monkeypatch):
    # Under the interpreter warp_specialize changes nothing; on sm_90 it builds producer and consumer warpgroups
    # (the compile gate checks USETMAXREG), which only a loop with every dot operand by TMA compiles to: the forward
    # alone is forced (backward gathers).
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    launched = forced("tma", (32, 64, 32, 4, 1, True, True), launchers=["conv2d_act_fwd"])
    check_case("triton", CASES[name], dtype)
    assert [(name, x_by_tma) for name, *_, x_by_tma in launched] == [
        ("_conv2d_act_fwd_kernel", True),
        ("_conv2d_act_bwd_dx_kernel", False),
        ("_conv2d_act_bwd_dw_kernel", False),
    ]


def _space(dtype, precision, weight_by_tma, dx=False):
    """The conv forward's (or dx's) autotune space on an H200 after pruning, as TMA_SHAPES-style rows (weight_by_tma:
    a launch with a descriptor argument)."""
    plain = [(*shape, False, False) for shape in GEMM_SHAPES]
    configs = [tma_config(shape, None) for shape in plain + CONV_HOPPER_SHAPES]
    x = torch.empty(4, 8, dtype=dtype)
    named_args = {"x_ptr": x, "w_desc": tensor_descriptor(x) if weight_by_tma else None}
    if dx:
        named_args = {"dy_ptr": x, "saved_ptr": x, "w_ptr": x, "w_desc": named_args["w_desc"]}
    kept = prune_conv_configs(configs, named_args, KH=3, ACTIVATION=1, DOT_PRECISION=precision)
    return [
        (*(c.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")), c.num_warps, c.num_stages, c.kwargs["PERSISTENT"])
        for c in kept
    ]


@pytest.mark.parametrize("dx", [False, True], ids=["forward", "dx"])
def test_autotune_space_has_persistent_configs_only_with_the_weight_by_tma(dx):
    fp16, tf32 = (torch.float16, "ieee"), (torch.float32, "tf32")
    assert _space(*fp16, weight_by_tma=True, dx=dx) == [
        (64, 32, 32, 4, 5, False),
        (32, 64, 32, 4, 5, False),
        (64, 32, 32, 4, 5, True),  # wgmma (64 rows), the weight by TMA
    ]
    assert _space(*fp16, weight_by_tma=False, dx=dx) == [(64, 32, 32, 4, 5, False), (32, 64, 32, 4, 5, False)]
    assert _space(*tf32, weight_by_tma=True, dx=dx) == [(*FALLBACK_SHAPE, False), (*FALLBACK_SHAPE, True)]
    assert _space(*tf32, weight_by_tma=False, dx=dx) == [(*FALLBACK_SHAPE, False)]
    assert _space(torch.float32, "ieee", weight_by_tma=False, dx=dx) == [(*FALLBACK_SHAPE, False)]


@pytest.mark.parametrize("dtype_name", ["fp16", "bf16", "tf32", "fp32"])
def test_no_warp_specialised_config_survives_where_a_dot_operand_is_gathered(dtype_name):
    # Triton 3.6 fails to compile a warp-specialised tile loop whose dot takes an operand through pointer loads
    # (gemm_common.CONV_HOPPER_SHAPES' note): such a config would break every launch that autotunes over it.
    dtype, precision = {"fp16": (torch.float16, "ieee"), "bf16": (torch.bfloat16, "ieee")}.get(
        dtype_name, (torch.float32, "tf32" if dtype_name == "tf32" else "ieee")
    )
    plain = [(*shape, False, False) for shape in GEMM_SHAPES]
    configs = [tma_config(shape, None) for shape in plain + CONV_HOPPER_SHAPES]
    assert any(c.kwargs["WARP_SPECIALIZE"] for c in configs)
    rows = torch.empty(8, 8, dtype=dtype)
    descriptor = tensor_descriptor(rows)
    launches = {
        "forward": {"x_ptr": rows, "x_desc": None, "w_ptr": rows, "w_desc": descriptor},
        "dx": {"dy_ptr": rows, "saved_ptr": rows, "w_ptr": rows, "w_desc": descriptor},
        "dw": {"dy_ptr": rows, "saved_ptr": rows, "dy_desc": descriptor, "saved_desc": descriptor, "dw_ptr": rows},
    }
    for named_args in launches.values():
        kept = prune_conv_configs(configs, named_args, KH=3, KW=3, ACTIVATION=1, DOT_PRECISION=precision)
        assert kept and not any(c.kwargs["WARP_SPECIALIZE"] for c in kept)


def test_persistent_grid_is_capped_at_the_programs_given():
    grid = kernels._tile_grid(rows=100, cols=40, groups=3, programs=5)
    assert grid({"BLOCK_M": 32, "BLOCK_N": 32, "PERSISTENT": False}) == (3 * 4 * 2,)
    assert grid({"BLOCK_M": 32, "BLOCK_N": 32, "PERSISTENT": True}) == (5,)
    assert grid({"BLOCK_M": 64, "BLOCK_N": 64, "PERSISTENT": True}) == (min(5, 3 * triton.cdiv(100, 64)),)


def test_dw_space_on_hopper_keeps_its_gather_tile_plain_and_persistent():
    # dW gathers its B tile (x) through pointers: 16-bit 64x32x32 only (gemm_common._fits_registers); TF32 with dy by
    # TMA keeps 32-row tiles (the transposed dy tile would serialise wgmma)
    plain = [(*shape, False, False) for shape in GEMM_SHAPES]
    configs = [tma_config(shape, None) for shape in plain + CONV_HOPPER_SHAPES]
    for dtype, precision, expected in [
        (torch.float16, "ieee", [(64, 32, 32, 4, 5, False), (64, 32, 32, 4, 5, True)]),
        (torch.float32, "tf32", [(*FALLBACK_SHAPE, False), (*FALLBACK_SHAPE, True)]),
    ]:
        rows = torch.empty(8, 8, dtype=dtype)
        descriptor = tensor_descriptor(rows)
        named_args = {"dy_ptr": rows, "saved_ptr": rows, "dy_desc": descriptor, "saved_desc": descriptor}
        named_args |= {"x_ptr": rows, "dw_ptr": rows}
        kept = prune_conv_configs(configs, named_args, KH=3, ACTIVATION=1, DOT_PRECISION=precision)
        shapes = [(*(c.kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")), c.num_warps, c.num_stages) for c in kept]
        assert [(*shape, c.kwargs["PERSISTENT"]) for shape, c in zip(shapes, kept, strict=True)] == expected


def test_dy_by_tma_only_where_tma_can_load_it(monkeypatch):
    monkeypatch.setattr(kernels, "hopper_device", lambda tensor: True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    dy = torch.randn(2, 16, 5, 7, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    dy_desc, saved_desc = kernels._grad_descriptors(None, dy, dy, 1, 1)
    assert dy_desc.shape == [2 * 5 * 7, 16] and dy_desc.strides == [16, 1]
    assert saved_desc.shape == dy_desc.shape and saved_desc is not dy_desc
    no_activation = kernels._grad_descriptors(None, dy, dy, 1, 0)
    assert no_activation[1] is no_activation[0]  # saved is not read
    assert kernels._grad_descriptors(None, dy.contiguous(), dy.contiguous(), 1, 1) == (None, None)  # NCHW
    assert kernels._grad_descriptors(None, dy[:, :12], dy[:, :12], 1, 1) == (None, None)  # not contiguous
    odd = torch.randn(2, 12, 5, 7, dtype=torch.float16).contiguous(memory_format=torch.channels_last)  # 24-byte rows
    assert kernels._grad_descriptors(None, odd, odd, 1, 1) == (None, None)
    assert kernels._grad_descriptors(None, dy.float(), dy.float(), 1, 1) == (None, None)  # IEEE fp32: FMA dots
    assert kernels._grad_descriptors("pointer", dy, dy, 1, 1) == (None, None)
    assert kernels._grad_descriptors(None, dy, dy, 4, 1) == (None, None)  # 4 channels per group: 8-byte starts
    assert kernels._grad_descriptors(None, dy, dy, 2, 1)[0] is not None
    with pytest.raises(ValueError, match="channels_last"):
        kernels._grad_descriptors("tma", odd, odd, 1, 1)
    monkeypatch.setattr(kernels, "hopper_device", lambda tensor: False)
    assert kernels._grad_descriptors(None, dy, dy, 1, 1) == (None, None)


# The H200's 16-bit wgmma configs. Every kernel where x is gathered: the plain tile and the persistent one; the
# pointwise forward (x by TMA): those and POINTWISE_SHAPES (warp-specialised ones included). (The TF32 rows are
# checked through the interpreter only: torch's fp32 conv, the tests' yardstick, need not run on TF32 tensor cores.)
GATHER_CONFIGS = [(64, 32, 32, 4, 5, False, False), (64, 32, 32, 4, 5, True, False)]
# More tiles than the 132 SMs; grouped with 32 channels per group; a ResNet-style pointwise layer.
GPU_HOPPER_CASES = {
    "resnet_56_residual": (16, 64, 56, 56, 64, 3, 1, 1, 1, 1, "relu", True, True),
    "grouped_28_silu": (8, 64, 28, 28, 64, 3, 1, 1, 1, 2, "silu", True, False),
    "pointwise_28_residual": (16, 128, 28, 28, 256, 1, 1, 0, 1, 1, "relu", True, True),
}
GPU_RUNS = [
    *((name, config, ("conv2d_act_fwd", "conv2d_act_bwd")) for name in GPU_HOPPER_CASES for config in GATHER_CONFIGS),
    *(("pointwise_28_residual", config, ("conv2d_act_fwd",)) for config in POINTWISE_SHAPES),
]


def _run_id(run):
    name, config, launchers = run
    tile = "x".join(map(str, config[:3])) + ("p" if config[5] else "") + ("ws" if config[6] else "")
    return f"{name}-{tile}" + ("-fwd" if len(launchers) == 1 else "")


@pytest.mark.gpu
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("run", GPU_RUNS, ids=map(_run_id, GPU_RUNS))
def test_gpu_every_hopper_config_matches_reference(run, dtype, forced):
    # What Triton's Hopper passes generate (wgmma, TMA, the persistent and warp-specialised loops) is beyond the
    # interpreter: each 16-bit config of the Hopper autotune space on the H200, forced, the weight and dy by TMA (the
    # pointwise rows in the forward only; backward then autotunes).
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the weight and dy come by TMA on capability 9.x")
    name, config, launchers = run
    launched = forced("tma", config, launchers)
    check_case("triton", GPU_HOPPER_CASES[name], dtype, device="cuda")
    assert [by_tma for _, _, _, by_tma, _ in launched] == [True, True, True]
    assert launched[0][4] == (name == "pointwise_28_residual")  # x by TMA in the pointwise forward


def test_pointwise_forward_space_adds_warp_specialised_configs_when_x_comes_by_tma():
    plain = [(*shape, False, False) for shape in GEMM_SHAPES]
    configs = [tma_config(shape, None) for shape in plain + CONV_HOPPER_SHAPES]
    rows = torch.empty(8, 8, dtype=torch.float16)
    descriptor = tensor_descriptor(rows)

    def space(x_desc):
        named_args = {"x_ptr": rows, "x_desc": x_desc, "w_ptr": rows, "w_desc": descriptor}
        kept = prune_conv_configs(configs, named_args, KH=1, KW=1, ACTIVATION=1, DOT_PRECISION="ieee")
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["WARP_SPECIALIZE"], c.num_warps) for c in kept]

    with_x = space(descriptor)
    assert (128, 128, True, 4) in with_x and (128, 64, True, 4) in with_x  # warp-specialised: 4 warps
    assert (128, 128, False, 8) in with_x and (128, 256, False, 8) not in with_x  # at most 64 accumulators a thread
    assert not any(ws for *_, ws, _ in space(None))  # the gather (x through pointers) keeps no warp-specialised row
    assert max(m * n for m, n, *_ in space(None)) == 64 * 32


def test_x_by_tma_only_for_a_pointwise_conv_whose_rows_tma_can_load():
    x = torch.randn(2, 16, 5, 7, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 16, 1, 1, dtype=torch.float16)
    descriptor = kernels._pointwise_descriptor(x, w, (1, 1), (0, 0), 1)
    assert descriptor.shape == [2 * 5 * 7, 16] and descriptor.strides == [16, 1]
    assert kernels._pointwise_descriptor(x, w, (2, 2), (0, 0), 1) is None  # strided
    assert kernels._pointwise_descriptor(x, w, (1, 1), (0, 1), 1) is None  # padded
    assert kernels._pointwise_descriptor(x, torch.randn(8, 16, 3, 3).half(), (1, 1), (0, 0), 1) is None  # 3x3
    assert kernels._pointwise_descriptor(x.contiguous(), w, (1, 1), (0, 0), 1) is None  # NCHW
    assert kernels._pointwise_descriptor(x, w[:, :4], (1, 1), (0, 0), 4) is None  # 4 channels per group: 8 bytes
