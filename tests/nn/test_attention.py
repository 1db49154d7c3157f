"""MultiheadAttention and TransformerEncoderLayer: drop-ins for torch's, same state_dict and results."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse.nn import MultiheadAttention, TransformerEncoderLayer
from tests.tolerances import assert_close_to_reference


def _padding_mask(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    return torch.arange(length)[None, :] >= lengths[:, None]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_multihead_attention_matches_torch(backend, batch_first):
    torch.manual_seed(0)
    ours = MultiheadAttention(32, 4, batch_first=batch_first)
    theirs = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    reference = nn.MultiheadAttention(32, 4, batch_first=batch_first).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 10, 32) if batch_first else torch.randn(10, 3, 32)
    mask = _padding_mask(3, 10)
    with deepfuse.use_backend(backend):
        out, weights = ours(x, x, x, key_padding_mask=mask, need_weights=False)
    assert weights is None
    expected = theirs(x, x, x, key_padding_mask=mask, need_weights=False)[0]
    ref = reference(x.double(), x.double(), x.double(), key_padding_mask=mask, need_weights=False)[0]
    assert_close_to_reference("out", out.detach(), ref.detach(), expected.detach(), torch.float32)
    for result in (out, expected, ref):
        result.square().sum().backward()
    for p, p_theirs, p_ref in zip(ours.parameters(), theirs.parameters(), reference.parameters(), strict=True):
        assert_close_to_reference("grad", p.grad, p_ref.grad, p_theirs.grad, torch.float32)


def test_multihead_attention_cross_attention_and_torch_path():
    torch.manual_seed(1)
    ours = MultiheadAttention(16, 2, batch_first=True)
    theirs = nn.MultiheadAttention(16, 2, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(ours(q, kv, kv, need_weights=False)[0], theirs(q, kv, kv, need_weights=False)[0])
    # need_weights=True (torch's default) needs the weights matrix: torch's implementation, same results
    out, weights = ours(q, kv, kv)
    expected_out, expected_weights = theirs(q, kv, kv)
    assert torch.equal(out, expected_out) and torch.equal(weights, expected_weights)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer_matches_torch(activation, norm_first):
    torch.manual_seed(2)
    kwargs = dict(dim_feedforward=64, dropout=0.0, activation=activation, norm_first=norm_first)
    ours = TransformerEncoderLayer(32, 4, **kwargs)
    theirs = nn.TransformerEncoderLayer(32, 4, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    reference = nn.TransformerEncoderLayer(32, 4, **kwargs).double()
    reference.load_state_dict(ours.state_dict())
    src = torch.randn(10, 3, 32)
    mask = _padding_mask(3, 10, seed=3)
    with deepfuse.use_backend("triton"):
        out = ours(src, src_key_padding_mask=mask)
    expected = theirs(src, src_key_padding_mask=mask)
    ref = reference(src.double(), src_key_padding_mask=mask)
    assert_close_to_reference("out", out.detach(), ref.detach(), expected.detach(), torch.float32)
    assert isinstance(ours.self_attn, MultiheadAttention) and ours.linear1.activation == activation


def test_transformer_encoder_layer_keeps_a_custom_activation():
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=torch.tanh)
    reference = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=torch.tanh)
    reference.load_state_dict(layer.state_dict())
    src = torch.randn(4, 2, 8)
    torch.testing.assert_close(layer(src), reference(src))


def test_transformer_encoder_fast_path_hands_nested_tensors_to_the_fused_layer():
    """nn.TransformerEncoder (eval, no_grad, padding mask) passes its layers nested tensors: same as torch's own."""
    from deepfuse.nn import TransformerEncoderLayer

    torch.manual_seed(0)
    ours = torch.nn.TransformerEncoder(TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    theirs = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = pad[2, 3:] = True
    with torch.no_grad():
        torch.testing.assert_close(ours(x, src_key_padding_mask=pad), theirs(x, src_key_padding_mask=pad))
