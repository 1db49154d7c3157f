"""MultiheadAttention and TransformerEncoderLayer: drop-ins for torch's, same state_dict and results."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse.backend import record_choices
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


def test_multihead_attention_cross_attention():
    torch.manual_seed(1)
    ours = MultiheadAttention(16, 2, batch_first=True)
    theirs = nn.MultiheadAttention(16, 2, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(ours(q, kv, kv, need_weights=False)[0], theirs(q, kv, kv, need_weights=False)[0])


@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_need_weights_stays_on_the_kernel_and_matches_torchs_weights(batched, average):
    """need_weights=True (torch's default): the output from the triton kernel, the weights from a second pass."""
    torch.manual_seed(4)
    ours = MultiheadAttention(16, 2, batch_first=True)
    theirs = nn.MultiheadAttention(16, 2, batch_first=True)
    theirs.load_state_dict(ours.state_dict())
    reference = nn.MultiheadAttention(16, 2, batch_first=True).double()
    reference.load_state_dict(ours.state_dict())
    q, kv = (torch.randn(2, 5, 16), torch.randn(2, 7, 16)) if batched else (torch.randn(5, 16), torch.randn(7, 16))
    mask = _padding_mask(2, 7, seed=5) if batched else _padding_mask(1, 7, seed=5)[0]
    kwargs = dict(key_padding_mask=mask, average_attn_weights=average)
    with record_choices() as log, deepfuse.use_backend("triton"):
        out, weights = ours(q, kv, kv, **kwargs)
    assert ("attention", "triton") in log and ("attention_weights", "torch") in log
    assert ("multihead_attention", "torch") not in log
    expected, expected_weights = theirs(q, kv, kv, **kwargs)
    ref, ref_weights = reference(q.double(), kv.double(), kv.double(), **kwargs)
    assert weights.shape == expected_weights.shape
    assert_close_to_reference("out", out.detach(), ref.detach(), expected.detach(), torch.float32)
    assert_close_to_reference(
        "weights", weights.detach(), ref_weights.detach(), expected_weights.detach(), torch.float32
    )


def test_need_weights_with_a_causal_mask_and_its_gradient():
    torch.manual_seed(6)
    ours = MultiheadAttention(8, 2)
    theirs = nn.MultiheadAttention(8, 2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 8)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    with deepfuse.use_backend("triton"):
        _, weights = ours(x, x, x, attn_mask=causal, is_causal=True)
    _, expected = theirs(x, x, x, attn_mask=causal)
    torch.testing.assert_close(weights, expected)
    weights.square().sum().backward()  # the weights are differentiable, as torch's are
    expected.square().sum().backward()
    torch.testing.assert_close(ours.in_proj_weight.grad, theirs.in_proj_weight.grad)


def _fallback_cases():
    """(name, module, call kwargs, the reason's key words): every condition the fused path cannot run."""
    float_mask = torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    return [
        ("bool attn_mask", MultiheadAttention(8, 2), dict(attn_mask=torch.rand(5, 5) > 0.7), "bool attn_mask"),
        ("float attn_mask", MultiheadAttention(8, 2), dict(attn_mask=float_mask), "float attn_mask"),
        (
            "float key_padding_mask",
            MultiheadAttention(8, 2),
            dict(key_padding_mask=torch.zeros(3, 5)),
            "torch.float32 key_padding_mask",
        ),
        ("add_bias_kv", MultiheadAttention(8, 2, add_bias_kv=True), {}, "add_bias_kv"),
        ("add_zero_attn", MultiheadAttention(8, 2, add_zero_attn=True), {}, "add_zero_attn"),
        ("dropout in training", MultiheadAttention(8, 2, dropout=0.1).train(), {}, "dropout 0.1 in training"),
    ]


@pytest.mark.parametrize("case", range(len(_fallback_cases())), ids=[c[0] for c in _fallback_cases()])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_a_call_the_fused_path_cannot_run_raises_under_a_requested_kernel_backend(backend, case):
    name, module, kwargs, words = _fallback_cases()[case]
    x = torch.randn(5, 3, 8)
    with deepfuse.use_backend(backend), pytest.raises(deepfuse.BackendUnavailableError) as error:
        module(x, x, x, need_weights=False, **kwargs)
    assert f"backend {backend!r} (from use_backend())" in str(error.value) and words in str(error.value)


@pytest.mark.parametrize("case", range(len(_fallback_cases())), ids=[c[0] for c in _fallback_cases()])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_a_call_the_fused_path_cannot_run_is_recorded_with_its_reason(backend, case):
    name, module, kwargs, words = _fallback_cases()[case]
    theirs = nn.MultiheadAttention(
        8, 2, dropout=module.dropout, add_bias_kv=module.bias_k is not None, add_zero_attn=module.add_zero_attn
    ).train(module.training)
    theirs.load_state_dict(module.state_dict())
    x = torch.randn(5, 3, 8)
    with record_choices() as log, deepfuse.use_backend(backend):
        torch.manual_seed(7)
        out, weights = module(x, x, x, **kwargs)
    torch.manual_seed(7)
    expected, expected_weights = theirs(x, x, x, **kwargs)
    assert list(log) == [("multihead_attention", "torch")] and words in log.reasons[0]
    assert torch.equal(out, expected) and torch.equal(weights, expected_weights)  # torch's implementation itself


def test_dropout_in_eval_and_dropout_zero_in_training_stay_fused():
    module = MultiheadAttention(8, 2, dropout=0.1)
    x = torch.randn(5, 3, 8)
    for mode in ("eval", "train"):
        getattr(module, mode)()
        if mode == "train":
            module.dropout = 0.0
        with record_choices() as log, deepfuse.use_backend("triton"):
            module(x, x, x, need_weights=False)
        assert ("attention", "triton") in log and not log.reasons, mode


def test_transformer_encoder_layer_with_default_dropout_raises_in_training_under_triton():
    layer = TransformerEncoderLayer(8, 2, 16)  # dropout 0.1, torch's default
    src = torch.randn(5, 3, 8)
    with deepfuse.use_backend("triton"), pytest.raises(deepfuse.BackendUnavailableError, match="dropout 0.1"):
        layer(src)
    with record_choices() as log, deepfuse.use_backend("triton"):
        layer.eval()(src)
    assert ("attention", "triton") in log and not log.reasons
    with record_choices() as log:
        layer.train()(src)
    assert ("multihead_attention", "torch") in log and "dropout 0.1 in training" in log.reasons[
        log.index(("multihead_attention", "torch"))
    ]


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


# --- forward_packed: packed variable-length sequences ---------------------------------------------------------
PACKED_LENGTHS = [1, 7, 4, 5]  # odd lengths, a single-token sequence among them
PACKED_WIDTH = 32


def _packed(x_padded: torch.Tensor, lengths: list[int]):
    """The real tokens of a batch_first padded batch, one sequence after another; cu_seqlens; the padding mask."""
    valid = torch.arange(x_padded.shape[1])[None, :] < torch.tensor(lengths)[:, None]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return x_padded[valid], cu_seqlens, valid


def _check_packed_against_padded(ours, theirs, reference, backend, padded_call):
    """ours.forward_packed on the real tokens vs ``padded_call(module, x, mask)`` of torch's module (float32 and the
    float64 reference) on the padded batch, at the real tokens: the output and the gradients of x and of every
    parameter, under the same upstream gradient. Returns the run's record_choices log."""
    theirs.load_state_dict(ours.state_dict())
    reference.load_state_dict(ours.state_dict())
    padded = torch.randn(len(PACKED_LENGTHS), max(PACKED_LENGTHS), PACKED_WIDTH)
    x, cu_seqlens, valid = _packed(padded, PACKED_LENGTHS)
    x.requires_grad_(True)
    x_theirs, x_ref = padded.clone().requires_grad_(True), padded.double().requires_grad_(True)
    with record_choices() as log, deepfuse.use_backend(backend):
        out = ours.forward_packed(x, cu_seqlens, max(PACKED_LENGTHS))
    expected = padded_call(theirs, x_theirs, ~valid)[valid]
    ref = padded_call(reference, x_ref, ~valid)[valid]
    assert_close_to_reference("out", out.detach(), ref.detach(), expected.detach(), torch.float32)
    dy = torch.randn_like(out)
    for result in (out, expected, ref):
        result.backward(dy.to(result.dtype))
    assert_close_to_reference("x.grad", x.grad, x_ref.grad[valid], x_theirs.grad[valid], torch.float32)
    parameters = zip(ours.named_parameters(), reference.parameters(), theirs.parameters(), strict=True)
    for (name, p), p_ref, p_theirs in parameters:
        assert_close_to_reference(f"{name}.grad", p.grad, p_ref.grad, p_theirs.grad, torch.float32)
    return log


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_multihead_attention_forward_packed_matches_the_padded_key_mask_path(backend):
    torch.manual_seed(8)
    ours = MultiheadAttention(PACKED_WIDTH, 4, batch_first=True)
    theirs, reference = (nn.MultiheadAttention(PACKED_WIDTH, 4, batch_first=True) for _ in range(2))

    def padded_call(module, x, mask):
        return module(x, x, x, key_padding_mask=mask, need_weights=False)[0]

    log = _check_packed_against_padded(ours, theirs, reference.double(), backend, padded_call)
    assert ("attention", backend) in log and not log.reasons, (list(log), dict(log.reasons))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_layer_forward_packed_matches_the_padded_key_mask_path(norm_first, backend):
    """Packed == padded with src_key_padding_mask, at the real tokens (pre-LN and post-LN)."""
    torch.manual_seed(9)
    kwargs = dict(dim_feedforward=48, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first)
    ours = TransformerEncoderLayer(PACKED_WIDTH, 4, **kwargs)
    theirs, reference = (nn.TransformerEncoderLayer(PACKED_WIDTH, 4, **kwargs) for _ in range(2))
    log = _check_packed_against_padded(
        ours, theirs, reference.double(), backend, lambda m, x, mask: m(x, src_key_padding_mask=mask)
    )
    assert ("attention", backend) in log and not log.reasons, (list(log), dict(log.reasons))


def test_forward_packed_with_attention_dropout_in_training_raises_under_triton_and_runs_torch_under_auto():
    layer = MultiheadAttention(8, 2, dropout=0.1, batch_first=True).train()
    theirs = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True).train()
    theirs.load_state_dict(layer.state_dict())
    x, cu_seqlens, valid = _packed(torch.randn(3, 5, 8), [5, 1, 3])
    with deepfuse.use_backend("triton"), pytest.raises(deepfuse.BackendUnavailableError, match="dropout 0.1"):
        layer.forward_packed(x, cu_seqlens, 5)
    with record_choices() as log:
        torch.manual_seed(7)
        out = layer.forward_packed(x, cu_seqlens, 5)
    assert list(log) == [("multihead_attention", "torch")] and "dropout 0.1 in training" in log.reasons[0]
    padded = torch.zeros(3, 5, 8)
    padded[valid] = x
    torch.manual_seed(7)
    expected = theirs(padded, padded, padded, key_padding_mask=~valid, need_weights=False)[0][valid]
    assert torch.equal(out, expected)  # torch's implementation itself, on the padded batch


def test_forward_packed_names_a_bad_argument():
    layer = TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    cu_seqlens = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"x must be packed tokens \(T, 8\)"):
        layer.forward_packed(torch.randn(1, 5, 8), cu_seqlens, 3)
    with pytest.raises(ValueError, match="token count 4"):
        layer.forward_packed(torch.randn(4, 8), cu_seqlens, 3)
    with pytest.raises(ValueError, match="must equal embed_dim"):
        MultiheadAttention(8, 2, kdim=4, vdim=4).forward_packed(torch.randn(5, 8), cu_seqlens, 3)


def test_forward_packed_keeps_the_state_dict():
    layer = TransformerEncoderLayer(8, 2, 16)
    assert list(layer.state_dict()) == list(nn.TransformerEncoderLayer(8, 2, 16).state_dict())
