"""Pieces shared by the Triton GEMM-shaped kernels (linear_act, conv2d_act): autotune configs, the dot
with its precision switches, tile ordering and the fused activation-gradient prologue; and for Hopper, when the
TMA kernels may run (hopper_device, tma_ready), their autotune space (TMA_SHAPES: plain, persistent and
warp-specialised) and the host tensor descriptors whose block shapes each config sets; conv2d_act's space
(conv_autotune: a program per tile, and persistent where an operand comes by TMA)."""

import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from .activations import activation_grad

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(block_shapes, pre_hook=None):
    """Autotune configs from (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); one small config
    when interpreting (the interpreter cannot autotune over several)."""
    if INTERPRET:
        block_shapes = [(32, 32, 32, 4, 1)]
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s, pre_hook=pre_hook
        )
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
    (32, 32, 32, 4, 3),  # FALLBACK_SHAPE: where every larger tile is pruned (prune_configs)
]


# sm_90: dynamic shared memory one block may opt in to (227 KiB).
MAX_SHARED_BYTES = 232_448


def shared_bytes_estimate(config: triton.Config, element_size: int, a_streams: int) -> int:
    """Shared memory of a config's pipelined operand tiles: num_stages copies of the A tile(s) (BLOCK_M x BLOCK_K;
    a_streams of them: backward kernels stream dy and the saved activation input) and the B tile (BLOCK_K x
    BLOCK_N). An upper bound of what Triton allocated for these kernels on sm_90 (tests/compile_gate checks it)."""
    block_m, block_n, block_k = (config.kwargs[name] for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return config.num_stages * (a_streams * block_m + block_n) * block_k * element_size


# Registers per thread a pointer-fed tile may take (see pointer_tile_registers). ptxas for sm_90 (Triton 3.6, the
# compile gate's table): every 16-bit or TF32 config estimated over 80 spilled in some linear kernel (16-bit
# 128x128x64 on 8 warps: 96, spilled 324 B in dW; TF32 64x64x64: 96, 784 B and wgmma serialised). The conv kernels
# gather their im2col operand element by element and keep a 64-bit address per gathered element in flight through
# the cp.async pipeline: 16-bit 64x64x64 (64) spilled 260-980 B, TF32 32x64x32 and 64x32x32 (40) 384-1,112 B, 16-bit
# 64x32x32 and 32x64x32 (28-36) none over the gate's budget.
POINTER_TILE_REGISTERS = 80
POINTER_TILE_REGISTERS_GATHER = 36

# IEEE fp32 dots run on FMAs: accumulators per thread a tile may have (ptxas for sm_90: 64x64 on 4 warps, 32, spilled
# 6.3 KB in linear); the conv gathers half of that (32x64 / 64x32 on 4 warps, 16 accumulators, spilled 0.4-1 KB).
FMA_ACCUMULATORS = 16
FMA_ACCUMULATORS_GATHER = 8

# The conv dW kernel gathers its B tile (BLOCK_K pixels x BLOCK_N (kh, kw, ci) columns) element by element: at most
# this many gathered elements per thread and stage (ptxas for sm_90: 16-bit 32x64x32 on 4 warps, 16 of them,
# spilled 632 B; 64x64x64, 32 of them, 2.5 KB; 64x32x32, 8, none).
DW_GATHERED_PER_THREAD = 8

# Accumulators per thread of the linear TMA kernels (see _prune_tma).
TMA_ACCUMULATORS = 64

# The smallest tile of GEMM_SHAPES: kept only where every other tile is pruned (it does the same work in more
# programs), e.g. the conv kernels' FMA and TF32 gathers.
FALLBACK_SHAPE = (32, 32, 32, 4, 3)


def accumulators_per_thread(config: triton.Config) -> int:
    """fp32 accumulator registers of one thread: the BLOCK_M x BLOCK_N tile over the threads holding it (when
    warp-specialised, two consumer warpgroups of num_warps warps each; the producer holds none)."""
    consumers = 2 * config.num_warps if config.kwargs.get("WARP_SPECIALIZE") else config.num_warps
    return config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] // (32 * consumers)


def pointer_tile_registers(config: triton.Config, element_size: int, a_streams: int) -> int:
    """Registers per thread of a pointer-fed GEMM tile: the fp32 accumulators plus one K step of the operand tiles
    (a_streams A tiles, BLOCK_M x BLOCK_K, and the BLOCK_K x BLOCK_N B tile) in 32-bit registers. Loads through
    pointers also keep their addresses live; the budgets (POINTER_TILE_REGISTERS*) are fitted to ptxas' spills."""
    kw = config.kwargs
    operand_bytes = (a_streams * kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * element_size
    return accumulators_per_thread(config) + operand_bytes // (4 * 32 * config.num_warps)


def _fits_registers(config: triton.Config, element_size: int, a_streams: int, fma: bool, kernel: set) -> bool:
    """Whether a pointer-fed (or, in conv, gathered) tile fits the registers of sm_90 without spilling. kernel: what
    the launch is ("conv": im2col gathers; "dw": the weight gradient, whose A tile is dy transposed)."""
    conv = "conv" in kernel
    if fma:
        return accumulators_per_thread(config) <= (FMA_ACCUMULATORS_GATHER if conv else FMA_ACCUMULATORS)
    budget = POINTER_TILE_REGISTERS_GATHER if conv else POINTER_TILE_REGISTERS
    if pointer_tile_registers(config, element_size, a_streams) > budget:
        return False
    if "dw" in kernel and element_size == 4 and config.kwargs["BLOCK_M"] >= 64:
        # wgmma takes TF32 operands K-major from shared memory only: dW's transposed dy tile goes through registers
        # and ptxas serialised the wgmmas (C7515; linear and conv dW at 64x32x32, 64x64x64, 128x128x32). 32-row
        # tiles lower to mma.sync.
        return False
    gathered = config.kwargs["BLOCK_K"] * config.kwargs["BLOCK_N"] // (32 * config.num_warps)
    return not (conv and "dw" in kernel) or gathered <= DW_GATHERED_PER_THREAD


def _shape(config: triton.Config) -> tuple:
    kw = config.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages)


def _without_fallback(kept: list) -> list:
    """kept, less the FALLBACK_SHAPE tile when another tile survived."""
    larger = [config for config in kept if _shape(config) != FALLBACK_SHAPE]
    return larger or kept


def _kernel_kind(named_args, kwargs) -> set:
    """{"conv"} for conv2d_act's kernels (implicit GEMM: the im2col operand gathered through pointers), plus "dw"
    for a weight-gradient kernel."""
    kind = set()
    if "KH" in named_args or "KH" in kwargs:
        kind.add("conv")
    if "dw_ptr" in named_args:
        kind.add("dw")
    return kind


def prune_configs(configs, named_args, **kwargs):
    """early_config_prune for the GEMM-shaped kernels, before the autotuner compiles anything: drops the configs
    whose tiles cannot fit a block's shared memory (a launch would fail with OutOfResources), and those that would
    spill registers or serialise wgmma on sm_90 (the compile gate fails on them; see _fits_registers and the
    budgets above); the FALLBACK_SHAPE tile only stays where nothing larger does.

    NOTE: ptxas for sm_90 (tests/compile_gate; speed unmeasured): fp32 128x256x64 with 3 stages needs 294,912 B
    of shared memory, and 21 such fp32 configs of the three GEMM and three conv kernels could never launch.
    """
    descriptors = [arg.base for arg in named_args.values() if isinstance(arg, TensorDescriptor)]
    if descriptors:  # a TMA kernel
        return _prune_tma(configs, descriptors[0].element_size(), named_args, kwargs)
    element_size = next(arg.element_size() for arg in named_args.values() if isinstance(arg, torch.Tensor))
    a_streams = 2 if named_args.get("saved_ptr") is not None and kwargs.get("ACTIVATION", 0) != 0 else 1
    fma = kwargs.get("DOT_PRECISION") == "ieee" and element_size == 4
    kind = _kernel_kind(named_args, kwargs)
    kept = [
        config
        for config in configs
        if shared_bytes_estimate(config, element_size, a_streams) <= MAX_SHARED_BYTES
        and _fits_registers(config, element_size, a_streams, fma, kind)
    ]
    return _without_fallback(kept)


def gemm_autotune(key: list[str], **blocks: tuple[str, str]):
    """@triton.autotune over GEMM_SHAPES for a GEMM-shaped kernel, pruned (prune_configs) before anything is
    compiled; the dot precision is part of the key (IEEE and TF32 keep their own choices). blocks: the block shapes
    of optional descriptor arguments (see descriptor_blocks; e.g. conv2d_act's weight when it comes by TMA)."""
    return triton.autotune(
        configs=autotune_configs(GEMM_SHAPES, descriptor_blocks(**blocks) if blocks else None),
        key=[*key, "DOT_PRECISION"],
        prune_configs_by={"early_config_prune": prune_configs},
    )


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
def grad_preact(dy, saved, ACTIVATION: tl.constexpr):
    """dz = dy * act'(saved) for one loaded tile, rounded to the input dtype (as torch's unfused backward stores it)."""
    if ACTIVATION == 0:
        return dy
    return (dy.to(tl.float32) * activation_grad(saved.to(tl.float32), ACTIVATION)).to(dy.dtype)


@triton.jit
def load_grad_preact(dy_ptr, saved_ptr, offsets, mask, ACTIVATION: tl.constexpr):
    """dz = dy * act'(saved) for one tile, loaded through pointers."""
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0)
    if ACTIVATION == 0:
        return dy
    return grad_preact(dy, tl.load(saved_ptr + offsets, mask=mask, other=0.0), ACTIVATION)


def dot_flags(dtype: torch.dtype) -> dict:
    precision = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return {"DOT_PRECISION": precision, "UPCAST_DOT": INTERPRET and dtype == torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Hopper: TMA tensor descriptors, persistent tile loops, warp specialisation
# ---------------------------------------------------------------------------------------------

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, PERSISTENT, WARP_SPECIALIZE) of the TMA kernels: the plain
# tiles of GEMM_SHAPES of 64+ rows (one program per tile), the large ones again persistent (one program per SM
# looping over tiles), and warp-specialised persistent ones. NOTE (SASS for sm_90, tests/compile_gate): tiles of
# 32 rows lower to mma.sync (HMMA), not wgmma (HGMMA, 64 rows per warpgroup), so they stay out. Triton 3.6 honours
# tl.range(warp_specialize=True) only at num_warps=4 and flatten=False: it then builds a producer warpgroup (TMA)
# and two consumer warpgroups (wgmma), 12 warps with setmaxnreg; with 8 warps the flag is ignored without a word.
TMA_SHAPES = [
    *((*shape, False, False) for shape in GEMM_SHAPES if shape[0] >= 64),
    (128, 256, 64, 8, 3, True, False),
    (128, 128, 64, 8, 3, True, False),
    (128, 128, 64, 4, 4, True, False),
    (128, 256, 64, 4, 3, True, True),
    (128, 128, 64, 4, 3, True, True),
    (128, 64, 64, 4, 4, True, True),
]

# What each TMA kernel's config is tested with under the interpreter (one config there, see autotune_configs):
# small tiles, every variant reachable by the tests through ``config=``.
INTERPRET_TMA_CONFIG = (32, 32, 32, 4, 1, False, False)


def hopper_device(tensor: torch.Tensor) -> bool:
    """Whether tensor lives on a capability 9.x CUDA device (an H100/H200), where the TMA kernels run."""
    return tensor.is_cuda and torch.cuda.get_device_capability(tensor.device)[0] == 9


def num_sms(tensor: torch.Tensor) -> int:
    """Programs of a persistent grid: the device's SMs; 3 on the CPU (the interpreter), so the tile loop runs."""
    return torch.cuda.get_device_properties(tensor.device).multi_processor_count if tensor.is_cuda else 3


def tma_ready(*tensors: torch.Tensor) -> bool:
    """TMA's rules for a 2-D operand: last dim contiguous, base address and row stride 16-byte aligned."""
    for t in tensors:
        if t.dim() != 2 or t.stride(1) != 1 or t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16:
            return False
    return True


def tensor_descriptor(t: torch.Tensor) -> TensorDescriptor:
    """A host descriptor of a tensor; its block shape is set per launch (the GEMMs: by the config's pre_hook)."""
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1] * t.dim())


def descriptor_blocks(**blocks: tuple[str, str]):
    """A config pre_hook setting each descriptor argument's block shape from the config, e.g.
    descriptor_blocks(x_desc=("BLOCK_M", "BLOCK_K")): the descriptor loads (BLOCK_M, BLOCK_K) tiles (of its last
    two dims; one element of each leading dim). Arguments that are no descriptor in this launch are left alone."""

    def hook(nargs):
        for name, (rows, cols) in blocks.items():
            descriptor = nargs[name]
            if isinstance(descriptor, TensorDescriptor):
                descriptor.block_shape = [1] * (len(descriptor.shape) - 2) + [nargs[rows], nargs[cols]]

    return hook


def tma_config(shape, pre_hook) -> triton.Config:
    bm, bn, bk, warps, stages, persistent, warp_specialize = shape
    return triton.Config(
        {
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "BLOCK_K": bk,
            "GROUP_M": 8,
            "PERSISTENT": persistent,
            "WARP_SPECIALIZE": warp_specialize,
        },
        num_warps=warps,
        num_stages=stages,
        pre_hook=pre_hook,
    )


def tma_autotune(key: list[str], **blocks: tuple[str, str]):
    """@triton.autotune over TMA_SHAPES (one small config under the interpreter) for a TMA kernel whose descriptor
    arguments take the block shapes ``blocks`` (see descriptor_blocks), pruned before anything compiles."""
    hook = descriptor_blocks(**blocks)
    shapes = [INTERPRET_TMA_CONFIG] if INTERPRET else TMA_SHAPES
    return triton.autotune(
        configs=[tma_config(shape, hook) for shape in shapes],
        key=[*key, "DOT_PRECISION"],
        prune_configs_by={"early_config_prune": prune_configs},
    )


def _prune_tma(configs, element_size, named_args, kwargs):
    """prune_configs for the TMA kernels: shared memory as shared_bytes_estimate, one more stage and the fp32
    accumulator tile when warp-specialised (ptxas for sm_90: fp16 128x128x64 s3 took 98,328 B plain, 114,912 B
    warp-specialised; TF32 196,632 B and 262,368 B). For conv2d_act (its weight by TMA, the activations gathered
    through pointers) the register rules of the pointer-fed tiles (_fits_registers). The linear kernels at most
    TMA_ACCUMULATORS per thread next to their epilogue (bias, activation, residual, the saved pre-activation) or
    prologue (dz = dy * act'(saved)); dW also forms its A tile (dz transposed) in registers: accumulators plus that
    tile within POINTER_TILE_REGISTERS. The backward kernels at most 128x128 outputs.

    NOTE (ptxas for sm_90, tests/compile_gate): the conv forward at fp16 128x256x64 on 8 warps with the weight by TMA
    took 255 registers, spilled 112 B and serialised its wgmmas (C7515): the gather's addresses and the 128
    accumulators per thread do not fit together. Linear forward at 16-bit spilled 324-452 B at 128x256x64 on 8 warps
    and 808 B at 128x128x32 on 4 warps (128 accumulators each); dW 676 B at 128x256x64 on 8 warps, 2,076 B at
    128x128x64 on 4 warps and 1,374 B at 128x64x64 on 4 warps (64 accumulators + a 32-register dz tile)."""
    saved = named_args.get("saved_desc", named_args.get("saved_ptr"))  # conv2d_act: pointer A, TMA weight
    a_streams = 2 if kwargs.get("ACTIVATION", 0) != 0 and saved is not None else 1
    kind = _kernel_kind(named_args, kwargs)
    fma = kwargs.get("DOT_PRECISION") == "ieee" and element_size == 4
    backward = "dy_desc" in named_args
    kept = []
    for config in configs:
        kw = config.kwargs
        if "conv" in kind:
            if not _fits_registers(config, element_size, a_streams, fma, kind):
                continue
        elif accumulators_per_thread(config) > TMA_ACCUMULATORS:
            continue
        if backward and kw["BLOCK_M"] * kw["BLOCK_N"] > 128 * 128:
            continue
        threads = 32 * config.num_warps * (2 if kw.get("WARP_SPECIALIZE") else 1)
        dz_tile = kw["BLOCK_M"] * kw["BLOCK_K"] * element_size // (4 * threads)
        if "dw" in kind and "conv" not in kind and accumulators_per_thread(config) + dz_tile > POINTER_TILE_REGISTERS:
            continue
        needed = shared_bytes_estimate(config, element_size, a_streams)
        if kw.get("WARP_SPECIALIZE"):
            needed += (a_streams * kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * element_size
            needed += kw["BLOCK_M"] * kw["BLOCK_N"] * 4
        if needed <= MAX_SHARED_BYTES:
            kept.append(config)
    return _without_fallback(kept)


def tma_grid(rows: int, cols: int, programs: int):
    """Programs for a TMA kernel's tile loop: one per tile, or at most ``programs`` when persistent."""

    def grid(meta):
        tiles = triton.cdiv(rows, meta["BLOCK_M"]) * triton.cdiv(cols, meta["BLOCK_N"])
        return (min(tiles, programs) if meta["PERSISTENT"] else tiles,)

    return grid


def launch_tma(kernel, grid, args, kwargs, config: tuple | None):
    """Launches an autotuned TMA kernel; with ``config`` (a TMA_SHAPES row) that config alone, bypassing the
    autotuner (tests reach every variant this way under the interpreter)."""
    if config is None:
        kernel[grid](*args, **kwargs)
        return
    chosen = tma_config(config, kernel.configs[0].pre_hook)
    meta = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs, **chosen.all_kwargs()}
    chosen.pre_hook(meta)
    kernel.fn[grid](*args, **kwargs, **chosen.all_kwargs())


# conv2d_act's kernels run one body as a program per tile (GEMM_SHAPES) and, with an operand by TMA (Hopper), also as
# these persistent rows (a program per SM looping over tiles), in TMA_SHAPES' form: first the tiles their im2col
# gather leaves registers for (_fits_registers: 16-bit 64x32x32 on 4 warps, wgmma; TF32 32x32x32, mma.sync), then
# POINTWISE_SHAPES. NOTE (Triton 3.6, sm_90): tl.range(warp_specialize=True) with num_warps=4 and flatten=False fails
# to compile ("PassManager::run failed" in NVGPUWarpSpecialization) for any tile loop whose dot takes an operand
# through pointer loads: the conv forward at 64x32x32 (s3), 128x32x32 and 128x64x32, and a plain GEMM loop with A by
# pointers and B by TMA (triton-lang/triton issue 9728, open). The im2col gather has no descriptor form (rows are
# pixels at a stride, taps cross the image border), so only a pointwise conv's forward (1x1, stride 1, no padding,
# channels_last: x by TMA as a (pixels, Cin) matrix, X_TMA) is warp-specialised: a plain GEMM with both operands by
# TMA, pruned as linear's TMA kernels are (prune_conv_configs); the gathering launches cannot afford its tiles.
POINTWISE_SHAPES = [
    (128, 128, 64, 8, 3, True, False),
    (128, 128, 64, 4, 3, True, True),
    (128, 64, 64, 4, 4, True, True),
]
CONV_HOPPER_SHAPES = [
    (64, 32, 32, 4, 5, True, False),
    (32, 32, 32, 4, 3, True, False),
    *POINTWISE_SHAPES,
]


def prune_conv_configs(configs, named_args, **kwargs):
    """prune_configs for conv2d_act's kernels: the persistent and warp-specialised rows only where an operand comes by
    TMA (a launch with a descriptor), since they are the Hopper variants; a pointwise forward with x by TMA as
    linear's TMA kernels (no gather)."""
    if not any(isinstance(arg, TensorDescriptor) for arg in named_args.values()):
        configs = [config for config in configs if not config.kwargs["PERSISTENT"]]
    if isinstance(named_args.get("x_desc"), TensorDescriptor):  # both operands by TMA: linear's rules
        gemm_kwargs = {name: value for name, value in kwargs.items() if name not in ("KH", "KW")}
        return _prune_tma(configs, named_args["x_desc"].base.element_size(), named_args, gemm_kwargs)
    return prune_configs(configs, named_args, **kwargs)


def conv_autotune(key: list[str], **blocks: tuple[str, str]):
    """@triton.autotune for conv2d_act's forward and dx kernels: GEMM_SHAPES one program per tile, plus
    CONV_HOPPER_SHAPES (one small config under the interpreter), pruned by prune_conv_configs; blocks: as
    gemm_autotune's."""
    hook = descriptor_blocks(**blocks)
    plain = [(*shape, False, False) for shape in GEMM_SHAPES]
    shapes = [INTERPRET_TMA_CONFIG] if INTERPRET else [*plain, *CONV_HOPPER_SHAPES]
    return triton.autotune(
        configs=[tma_config(shape, hook) for shape in shapes],
        key=[*key, "DOT_PRECISION"],
        prune_configs_by={"early_config_prune": prune_conv_configs},
    )
