"""The Hopper GEMM kernels of linear_act (TMA tensor descriptors; plain, persistent and warp-specialised tile loops)
through the interpreter against the float64 specification, forward and backward, and when the launchers take
them. On the CPU the persistent grid is 3 programs (gemm_common.num_sms), so the tile loop runs several tiles.
Whether they really compile to wgmma + TMA (+ setmaxnreg) on sm_90 is the compile gate's check."""

import zlib

import pytest
import torch

from deepfuse.kernels import linear_act as kernels
from deepfuse.kernels.gemm_common import TMA_SHAPES
from deepfuse.ops.activations import ACTIVATION_CODES, ACTIVATIONS
from deepfuse.ops.linear_act import linear_act_ref
from tests.reference import forward_backward
from tests.tolerances import assert_close_to_reference

# gemm_common.TMA_SHAPES rows with interpreter-sized tiles: one program per tile, persistent, warp-specialised.
VARIANTS = {
    "plain": (32, 32, 32, 4, 1, False, False),
    "persistent": (32, 32, 32, 4, 1, True, False),
    "warp_specialized": (32, 64, 32, 4, 1, True, True),
}
# (M, N, K): TMA needs 16-byte rows (N, K multiples of 8 in fp16, of 4 in fp32); M odd, K past a block, size 1.
SHAPES = [(37, 40, 72), (1, 8, 24), (70, 96, 136)]


def _inputs(M, N, K, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g, dtype=torch.float64)
    w = torch.randn(N, K, generator=g, dtype=torch.float64) / K**0.5
    b = torch.randn(N, generator=g, dtype=torch.float64)
    dy = torch.randn(M, N, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, w, b, dy)]


def _check(variant, dtype, shape, activation, device="cpu"):
    x, w, b, dy = _inputs(*shape, dtype, seed=zlib.crc32(f"{variant}{shape}{activation}{dtype}".encode()))
    x, w, b, dy = (t.to(device) for t in (x, w, b, dy))
    config = VARIANTS[variant] if isinstance(variant, str) else variant
    code = ACTIVATION_CODES[activation]
    y, preact = kernels.linear_act_fwd(x, w, b, code, True, variant="tma", config=config)
    # saved = z works for every activation (relu/leaky_relu read only its sign)
    dx, dw, db = kernels.linear_act_bwd(dy, preact, x, w, code, True, True, True, variant="tma", config=config)

    spec = lambda *t: linear_act_ref(*t, activation)  # noqa: E731
    torch_y, torch_grads = forward_backward(spec, (x, w, b), dy)
    ref_y, ref_grads = forward_backward(spec, [t.double() for t in (x, w, b)], dy.double())
    assert_close_to_reference("y", y, ref_y, torch_y, dtype)
    for name, got, theirs, expected in zip(("dx", "dw", "db"), (dx, dw, db), torch_grads, ref_grads, strict=True):
        assert_close_to_reference(name, got, expected, theirs, dtype)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_tma_kernels_match_reference(variant, dtype, shape):
    _check(variant, dtype, shape, "gelu")


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tma_kernels_every_activation(activation):
    _check("warp_specialized", torch.float16, (37, 40, 72), activation)


def test_tma_forward_without_bias_and_preact_is_bitwise_repeatable():
    x, w, _, _ = _inputs(37, 40, 72, torch.float32, seed=3)
    first, _ = kernels.linear_act_fwd(
        x, w, None, ACTIVATION_CODES["relu"], False, variant="tma", config=VARIANTS["persistent"]
    )
    second, _ = kernels.linear_act_fwd(
        x, w, None, ACTIVATION_CODES["relu"], False, variant="tma", config=VARIANTS["persistent"]
    )
    expected = linear_act_ref(x.double(), w.double(), None, "relu")
    assert_close_to_reference("y", first, expected, linear_act_ref(x, w, None, "relu"), torch.float32)
    assert torch.equal(first, second)


@pytest.fixture
def on_hopper(monkeypatch):
    """The launchers believe the tensors live on a capability 9.0 device."""
    monkeypatch.setattr(kernels, "hopper_device", lambda tensor: True)


@pytest.mark.usefixtures("on_hopper")
def test_launchers_take_tma_on_hopper_when_operands_qualify(monkeypatch):
    x, w, _, _ = _inputs(16, 24, 40, torch.float16, seed=5)
    assert kernels._take_tma(None, x, w)
    assert kernels._take_tma(None, x[:, :32], w[:, :32])  # views: rows of 80 B stay 16-byte aligned
    assert not kernels._take_tma(None, x.t().contiguous().t(), w)  # x's last dim is not contiguous
    assert not kernels._take_tma(None, x[:, 1:], w[:, 1:])  # base 2 bytes past 16-byte alignment
    odd = _inputs(16, 10, 33, torch.float16, seed=6)  # K = 33: 66-byte rows
    assert not kernels._take_tma(None, odd[0], odd[1])
    assert not kernels._take_tma("pointer", x, w)
    launched = []
    monkeypatch.setattr(kernels, "launch_tma", lambda kernel, *args: launched.append(kernel.fn.fn.__name__))
    kernels.linear_act_fwd(x, w, None, 0, False)
    kernels.linear_act_bwd(x.new_ones(16, 24), x.new_ones(16, 24), x, w, 0, True, True, True)
    assert launched == ["_linear_act_fwd_tma_kernel", "_linear_act_bwd_dx_tma_kernel", "_linear_act_bwd_dw_tma_kernel"]


@pytest.mark.usefixtures("on_hopper")
def test_fp32_takes_tma_only_with_tf32_dots():
    x, w, _, _ = _inputs(16, 24, 40, torch.float32, seed=7)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert not kernels._take_tma(None, x, w)  # IEEE fp32 dots run on FMAs: the pointer kernel
        torch.backends.cuda.matmul.allow_tf32 = True
        assert kernels._take_tma(None, x, w)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def test_tma_refuses_what_tma_cannot_load():
    x, w, _, _ = _inputs(16, 10, 33, torch.float16, seed=8)
    with pytest.raises(ValueError, match="16-byte"):
        kernels.linear_act_fwd(x, w, None, 0, False, variant="tma")
    with pytest.raises(ValueError, match="variant must be"):
        kernels.linear_act_fwd(x, w, None, 0, False, variant="wgmma")


@pytest.mark.gpu
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "config",
    TMA_SHAPES,
    ids=lambda c: "x".join(map(str, c[:3])) + f"w{c[3]}s{c[4]}" + ("p" if c[5] else "") + ("ws" if c[6] else ""),
)
def test_gpu_every_tma_config_matches_reference(config, dtype):
    # Every config of the autotune space on the H200, warp-specialised ones included: the interpreter cannot check
    # what Triton's Hopper passes (wgmma, TMA, warp specialisation) generate. More tiles than SMs for persistence.
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("TMA kernels are taken on capability 9.x")
    _check(config, dtype, (2 * 132 * 64 + 37, 264, 520), "gelu", device="cuda")
