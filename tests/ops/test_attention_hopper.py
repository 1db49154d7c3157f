"""The Hopper attention kernels (Q, K, V and dO tiles by TMA through 4-D tensor descriptors): the forward in each
variant of its autotune space (one program per tile, persistent, warp-specialised) and both backward kernels,
through the interpreter against the float64 specification, and when the launchers take them. On the CPU the
persistent grid is 3 programs (gemm_common.num_sms), so the tile loop runs several tiles. Whether they compile to
wgmma + TMA (+ setmaxnreg) on sm_90 is the compile gate's check."""

import itertools
import math

import pytest
import torch

from deepfuse.kernels import attention as kernels
from deepfuse.ops.attention import attention_ref
from tests.reference import forward_backward
from tests.tolerances import assert_close_to_reference

# kernels.FwdVariant rows with interpreter-sized tiles (the launcher's default under the interpreter is "plain").
FWD_VARIANTS = {
    "plain": None,
    "persistent": kernels.FwdVariant(32, 32, 4, 1, True, False),
    "warp_specialized": kernels.FwdVariant(32, 32, 4, 1, True, True),
}

# (B, Hq, Hkv, Nq, Nk, D, causal, padded keys): odd lengths, GQA/MQA, D below its power of two (TMA zero-fills),
# a single query.
CASES = {
    "odd D64": (2, 2, 2, 37, 53, 64, False, False),
    "causal gqa D40": (1, 4, 2, 45, 45, 40, True, False),
    "mask mqa D32": (2, 2, 1, 17, 70, 32, False, True),
    "causal mask Nq1 D16": (2, 1, 1, 1, 33, 16, True, True),
}


def _case(name, dtype):
    B, Hq, Hkv, Nq, Nk, D, causal, masked = CASES[name]
    g = torch.Generator().manual_seed(len(name) * 7919 + D)
    q, k, v = (
        torch.randn(B, h, n, D, generator=g, dtype=torch.float64).to(dtype) for h, n in ((Hq, Nq), (Hkv, Nk), (Hkv, Nk))
    )
    mask = None
    if masked:
        mask = torch.rand(B, Nk, generator=g) < 0.4
        mask[0] = True  # a batch whose every key is padded: zeros out, lse +inf
    return q, k, v, mask, causal


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("variant", FWD_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_tma_forward_matches_reference(name, dtype, variant):
    q, k, v, mask, causal = _case(name, dtype)
    scale = 1 / math.sqrt(q.shape[-1])
    out, lse = kernels.attention_fwd(q, k, v, mask, causal, scale, variant="tma", config=FWD_VARIANTS[variant])
    reference = attention_ref(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=mask)
    yardstick = attention_ref(q, k, v, causal=causal, key_padding_mask=mask)
    assert_close_to_reference("out", out, reference, yardstick, dtype)
    pointer_out, pointer_lse = kernels.attention_fwd(q, k, v, mask, causal, scale, variant="pointer")
    assert torch.allclose(lse, pointer_lse, atol=1e-5, rtol=1e-5)  # the same online softmax, other loads
    assert torch.equal(torch.isinf(lse), torch.isinf(pointer_lse))


def _gradients(q, k, v, mask, causal, dy, dtype):
    """(reference float64 gradients, torch's in dtype) of <attention_ref(q, k, v), dy>."""
    spec = lambda *t: attention_ref(*t, causal=causal, key_padding_mask=mask)  # noqa: E731
    _, theirs = forward_backward(spec, (q, k, v), dy)
    _, expected = forward_backward(spec, [t.double() for t in (q, k, v)], dy.double())
    return expected, theirs


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_tma_backward_matches_reference(name, dtype):
    q, k, v, mask, causal = _case(name, dtype)
    dy = torch.randn(q.shape, generator=torch.Generator().manual_seed(len(name)), dtype=torch.float64).to(dtype)
    scale = 1 / math.sqrt(q.shape[-1])
    out, lse = kernels.attention_fwd(q, k, v, mask, causal, scale, variant="pointer")
    grads = kernels.attention_bwd(dy, q, k, v, out, lse, mask, causal, scale, variant="tma")
    expected, theirs = _gradients(q, k, v, mask, causal, dy, dtype)
    for grad_name, got, reference, yardstick in zip(("dq", "dk", "dv"), grads, expected, theirs, strict=True):
        assert_close_to_reference(grad_name, got, reference, yardstick, dtype)
    again = kernels.attention_bwd(dy, q, k, v, out, lse, mask, causal, scale, variant="tma")
    assert all(torch.equal(a, b) for a, b in zip(grads, again, strict=True))  # deterministic: no atomics


# (q lengths, k lengths, Hq, Hkv, D): packed sequences through one (1, H, T, D) descriptor. Lengths 0 and 1 and
# lengths off the interpreter's 32-row tiles, so sequences start at odd token rows and their last tiles run into the
# next sequence; the last one ends mid-tile at the end of the tensor (TMA's zeros); GQA; queries and keys of
# different lengths, queries with no key (zeros out, lse +inf).
VARLEN_CASES = {
    "self gqa D40": ([5, 0, 33, 64, 17, 1], [5, 0, 33, 64, 17, 1], 4, 2, 40),
    "cross mqa D16": ([3, 0, 40, 1, 2], [7, 5, 33, 20, 0], 2, 1, 16),
}


def _varlen_case(name, dtype):
    lengths_q, lengths_k, Hq, Hkv, D = VARLEN_CASES[name]
    g = torch.Generator().manual_seed(len(name) * 31 + D)
    q = torch.randn(sum(lengths_q), Hq, D, generator=g, dtype=torch.float64).to(dtype)
    k, v = (torch.randn(sum(lengths_k), Hkv, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
    dy = torch.randn(q.shape, generator=g, dtype=torch.float64).to(dtype)
    cu_q, cu_k = (torch.tensor([0, *itertools.accumulate(n)], dtype=torch.int32) for n in (lengths_q, lengths_k))
    return (q, k, v), dy, (cu_q, cu_k), (max(lengths_q), max(lengths_k))


def _packed_spec(cu_seqlens, causal):
    """attention_ref on each packed sequence alone, as one function of the packed (T, H, D) tensors."""
    bounds_q, bounds_k = (list(itertools.pairwise(cu.tolist())) for cu in cu_seqlens)

    def spec(q, k, v):
        outs = []
        for (q0, q1), (k0, k1) in zip(bounds_q, bounds_k, strict=True):
            batch = [t[a:b].transpose(0, 1).unsqueeze(0) for t, (a, b) in ((q, (q0, q1)), (k, (k0, k1)), (v, (k0, k1)))]
            outs.append(attention_ref(*batch, causal=causal)[0].transpose(0, 1))
        return torch.cat(outs)

    return spec


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize(
    ("dtype", "variant"),
    # every variant in fp16; fp32 (the same tile loop, other operand widths) one program per tile: seconds of CPU
    [(torch.float16, variant) for variant in FWD_VARIANTS] + [(torch.float32, "plain")],
    ids=str,
)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", VARLEN_CASES)
def test_tma_varlen_forward_matches_reference(name, causal, dtype, variant):
    tensors, _, cu_seqlens, max_seqlens = _varlen_case(name, dtype)
    scale = 1 / math.sqrt(tensors[0].shape[-1])
    args = (None, causal, scale, cu_seqlens, max_seqlens)
    out, lse = kernels.attention_fwd(*tensors, *args, variant="tma", config=FWD_VARIANTS[variant])
    spec = _packed_spec(cu_seqlens, causal)
    assert_close_to_reference("out", out, spec(*(t.double() for t in tensors)), spec(*tensors), dtype)
    _, pointer_lse = kernels.attention_fwd(*tensors, *args, variant="pointer")
    assert torch.allclose(lse, pointer_lse, atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.isinf(lse), torch.isinf(pointer_lse))


@pytest.mark.usefixtures("poison_outputs")
def test_tma_varlen_without_any_key_gives_zeros(monkeypatch):
    # every key sequence empty: no descriptor is made (TMA takes no empty dimension); out 0, lse +inf, gradients 0
    def descriptor(t):
        assert t.numel() > 0, "a TMA descriptor over an empty tensor"
        return tensor_descriptor(t)

    tensor_descriptor = kernels.tensor_descriptor
    monkeypatch.setattr(kernels, "tensor_descriptor", descriptor)
    q, dy = torch.randn(2, 6, 2, 16, dtype=torch.float16)
    k = v = torch.empty(0, 1, 16, dtype=torch.float16)
    cu_seqlens = (torch.tensor([0, 2, 6], dtype=torch.int32), torch.zeros(3, dtype=torch.int32))
    args = (None, False, 0.25, cu_seqlens, (4, 0))
    out, lse = kernels.attention_fwd(q, k, v, *args, variant="tma")
    assert torch.equal(out, torch.zeros_like(q)) and torch.isinf(lse).all()
    dq, dk, dv = kernels.attention_bwd(dy, q, k, v, out, lse, *args, variant="tma")
    assert torch.equal(dq, torch.zeros_like(q)) and dk.shape == dv.shape == k.shape


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", VARLEN_CASES)
def test_tma_varlen_backward_matches_reference(name, dtype, causal):
    tensors, dy, cu_seqlens, max_seqlens = _varlen_case(name, dtype)
    scale = 1 / math.sqrt(tensors[0].shape[-1])
    args = (None, causal, scale, cu_seqlens, max_seqlens)
    out, lse = kernels.attention_fwd(*tensors, *args, variant="pointer")
    grads = kernels.attention_bwd(dy, *tensors, out, lse, *args, variant="tma")
    spec = _packed_spec(cu_seqlens, causal)
    _, theirs = forward_backward(spec, tensors, dy)
    _, expected = forward_backward(spec, [t.double() for t in tensors], dy.double())
    for grad_name, got, reference, yardstick in zip(("dq", "dk", "dv"), grads, expected, theirs, strict=True):
        assert_close_to_reference(grad_name, got, reference, yardstick, dtype)


@pytest.fixture
def on_hopper(monkeypatch):
    monkeypatch.setattr(kernels, "hopper_device", lambda tensor: True)


@pytest.mark.usefixtures("on_hopper")
def test_launcher_takes_tma_on_hopper_when_inputs_qualify():
    q, k, v, _, _ = _case("odd D64", torch.float16)
    assert kernels._take_tma(None, q, k, v)
    assert kernels._take_tma(None, q.transpose(1, 2).contiguous().transpose(1, 2), k, v)  # (B, N, H, D) storage
    assert not kernels._take_tma(None, q[..., 1:], k[..., 1:], v[..., 1:])  # base and strides off 16 bytes
    assert not kernels._take_tma(None, q.transpose(2, 3), k, v)  # last dim not contiguous
    assert not kernels._take_tma(None, q.float(), k.float(), v.float())  # IEEE fp32: FMA dots, pointer kernel
    assert not kernels._take_tma(None, q, k, v, rows=32)  # 32-row dots lower to mma.sync: the pointer kernel
    with pytest.raises(ValueError, match="16-byte"):
        kernels._take_tma("tma", q[..., 1:], k[..., 1:], v[..., 1:])


class _Launches:
    """Stands in for the four backward kernels: records which ones a launcher starts."""

    def __init__(self):
        self.names = []

    def kernel(self, name):
        recorder = self

        class Kernel:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.names.append(name)

        return Kernel()


@pytest.mark.usefixtures("on_hopper")
@pytest.mark.parametrize(
    ("D", "expected"),
    [
        (64, ["_attention_bwd_dkdv_tma_kernel", "_attention_bwd_dq_tma_kernel"]),
        # D = 256: dK/dV takes 32 keys per program (shared memory), under wgmma's 64 rows: its pointer kernel
        (256, ["_attention_bwd_dkdv_kernel", "_attention_bwd_dq_tma_kernel"]),
    ],
)
def test_backward_launcher_takes_tma_where_the_h200_tiles_allow(D, expected, monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)  # the H200's tile table
    launches = _Launches()
    for name in ("_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel", *expected):
        monkeypatch.setattr(kernels, name, launches.kernel(name))
    q, k, v = (torch.randn(1, 2, 40, D, dtype=torch.float16) for _ in range(3))
    lse = torch.zeros(1, 2, 40)
    kernels.attention_bwd(q, q, k, v, q, lse, None, True, 0.1)
    assert launches.names == expected
    launches.names.clear()
    cu = torch.tensor([0, 15, 40], dtype=torch.int32)
    packed = [t[0].transpose(0, 1) for t in (q, k, v)]  # varlen (T, H, D): the same choice, by its (1, H, T, D) view
    kernels.attention_bwd(packed[0], *packed, packed[0], lse[0], None, True, 0.1, (cu, cu), (25, 25))
    assert launches.names == expected
    launches.names.clear()
    packed = [t[..., 1:] for t in packed]  # base off 16 bytes: the pointer kernels
    kernels.attention_bwd(packed[0], *packed, packed[0], lse[0], None, True, 0.1, (cu, cu), (25, 25))
    assert launches.names == ["_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel"]


@pytest.mark.usefixtures("on_hopper")
def test_varlen_forward_launcher_takes_tma_when_inputs_qualify(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)  # the H200's tile table: 64-row query tiles
    launches = _Launches()
    monkeypatch.setattr(kernels, "_attention_fwd_kernel", launches.kernel("_attention_fwd_kernel"))
    monkeypatch.setattr(kernels, "_launch_fwd_tma", lambda *args: launches.names.append("_launch_fwd_tma"))
    (q, k, v), _, cu_seqlens, max_seqlens = _varlen_case("self gqa D40", torch.float16)
    kernels.attention_fwd(q, k, v, None, True, 0.1, cu_seqlens, max_seqlens)
    kernels.attention_fwd(q.float(), k.float(), v.float(), None, True, 0.1, cu_seqlens, max_seqlens)  # IEEE fp32
    kernels.attention_fwd(q[..., 1:], k[..., 1:], v[..., 1:], None, True, 0.1, cu_seqlens, max_seqlens)  # unaligned
    assert launches.names == ["_launch_fwd_tma", "_attention_fwd_kernel", "_attention_fwd_kernel"]


@pytest.mark.gpu
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_tma_forward_matches_reference(causal, D, dtype):
    # The H200's tiles (64 queries; 8 warps at D = 256), which the interpreter's 32x32 tiles do not reach.
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA kernel is taken on capability 9.x")
    g = torch.Generator().manual_seed(D)
    q, k, v = (torch.randn(2, h, 1000, D, generator=g).to("cuda", dtype) for h in (4, 2, 2))
    mask = torch.rand(2, 1000, generator=g).cuda() < 0.2
    scale = 1 / math.sqrt(D)
    assert kernels._take_tma(None, q, k, v)
    out, lse = kernels.attention_fwd(q, k, v, mask, causal, scale)
    reference = attention_ref(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=mask)
    yardstick = attention_ref(q, k, v, causal=causal, key_padding_mask=mask)
    assert_close_to_reference("out", out, reference, yardstick, dtype)
    _, pointer_lse = kernels.attention_fwd(q, k, v, mask, causal, scale, variant="pointer")
    assert torch.allclose(lse, pointer_lse, atol=1e-4, rtol=1e-4)


def _gpu_case(D, dtype):
    g = torch.Generator().manual_seed(D)
    q, k, v, dy = (torch.randn(2, h, 1000, D, generator=g).to("cuda", dtype) for h in (4, 2, 2, 4))
    mask = torch.rand(2, 1000, generator=g).cuda() < 0.2
    return q, k, v, dy, mask


@pytest.mark.gpu
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [64, 128, 256])
def test_gpu_every_tma_forward_variant_matches_reference(D, dtype):
    # Each row of the autotune space (persistent and warp-specialised ones included) on the H200, causal: the
    # interpreter cannot check what Triton's Hopper passes generate.
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA kernels are taken on capability 9.x")
    q, k, v, _, mask = _gpu_case(D, dtype)
    reference = attention_ref(q.double(), k.double(), v.double(), causal=True, key_padding_mask=mask)
    yardstick = attention_ref(q, k, v, causal=True, key_padding_mask=mask)
    for variant in kernels.fwd_tma_variants(D, dtype, "ieee"):
        out, _ = kernels.attention_fwd(q, k, v, mask, True, 1 / math.sqrt(D), variant="tma", config=variant)
        assert_close_to_reference(f"out {variant}", out, reference, yardstick, dtype)


@pytest.mark.gpu
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_tma_backward_matches_reference(causal, D, dtype):
    # The launcher's choice on the H200 (TMA for dQ at every D, for dK/dV up to D = 128) against the reference.
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA kernels are taken on capability 9.x")
    q, k, v, dy, mask = _gpu_case(D, dtype)
    scale = 1 / math.sqrt(D)
    out, lse = kernels.attention_fwd(q, k, v, mask, causal, scale)
    grads = kernels.attention_bwd(dy, q, k, v, out, lse, mask, causal, scale)
    expected, theirs = _gradients(q, k, v, mask, causal, dy, dtype)
    for grad_name, got, reference, yardstick in zip(("dq", "dk", "dv"), grads, expected, theirs, strict=True):
        assert_close_to_reference(grad_name, got, reference, yardstick, dtype)


@pytest.mark.gpu
@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_tma_varlen_matches_reference(causal, D, dtype):
    # Packed sequences on the H200's 64-row tiles (lengths 0 and 1, starts and ends mid-tile, the last one ending
    # mid-tile at the tensor's end) through the launcher's choice: the TMA forward (autotuned, then each variant),
    # TMA dQ at every D and TMA dK/dV up to D = 128.
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the TMA kernels are taken on capability 9.x")
    lengths = [64, 1, 511, 0, 300, 129]
    g = torch.Generator().manual_seed(D)
    q, k, v, dy = (torch.randn(sum(lengths), h, D, generator=g).to("cuda", dtype) for h in (4, 2, 2, 4))
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    args = (None, causal, 1 / math.sqrt(D), (cu, cu), (max(lengths), max(lengths)))
    assert kernels._take_tma(None, q, k, v, dy)
    spec = _packed_spec((cu, cu), causal)
    reference, yardstick = spec(q.double(), k.double(), v.double()), spec(q, k, v)
    out, lse = kernels.attention_fwd(q, k, v, *args)
    assert_close_to_reference("out", out, reference, yardstick, dtype)
    for variant in kernels.fwd_tma_variants(D, dtype, "ieee"):
        out_variant, _ = kernels.attention_fwd(q, k, v, *args, variant="tma", config=variant)
        assert_close_to_reference(f"out {variant}", out_variant, reference, yardstick, dtype)
    grads = kernels.attention_bwd(dy, q, k, v, out, lse, *args)
    _, theirs = forward_backward(spec, (q, k, v), dy)
    _, expected = forward_backward(spec, [t.double() for t in (q, k, v)], dy.double())
    for grad_name, got, grad_reference, grad_yardstick in zip(("dq", "dk", "dv"), grads, expected, theirs, strict=True):
        assert_close_to_reference(grad_name, got, grad_reference, grad_yardstick, dtype)
