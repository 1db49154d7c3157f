"""The Hopper attention forward (Q, K, V tiles by TMA through 4-D tensor descriptors) through the interpreter
against the float64 specification, and when the launcher takes it. Whether it compiles to wgmma + TMA on sm_90 is
the compile gate's check."""

import math

import pytest
import torch

from deepfuse.kernels import attention as kernels
from deepfuse.ops.attention import attention_ref
from tests.tolerances import assert_close_to_reference

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
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_tma_forward_matches_reference(name, dtype):
    q, k, v, mask, causal = _case(name, dtype)
    scale = 1 / math.sqrt(q.shape[-1])
    out, lse = kernels.attention_fwd(q, k, v, mask, causal, scale, variant="tma")
    reference = attention_ref(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=mask)
    yardstick = attention_ref(q, k, v, causal=causal, key_padding_mask=mask)
    assert_close_to_reference("out", out, reference, yardstick, dtype)
    pointer_out, pointer_lse = kernels.attention_fwd(q, k, v, mask, causal, scale, variant="pointer")
    assert torch.allclose(lse, pointer_lse, atol=1e-5, rtol=1e-5)  # the same online softmax, other loads
    assert torch.equal(torch.isinf(lse), torch.isinf(pointer_lse))


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
    with pytest.raises(ValueError, match="16-byte"):
        kernels._take_tma("tma", q[..., 1:], k[..., 1:], v[..., 1:])


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
