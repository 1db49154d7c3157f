"""LSTM and LSTMCell: drop-ins for torch's, same parameters and state_dict, same outputs and gradients."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import deepfuse
from deepfuse.nn import LSTM, LSTMCell
from tests.tolerances import assert_close_to_reference

CONFIGS = {
    "1_layer": dict(num_layers=1),
    "2_layers_bidirectional_batch_first": dict(num_layers=2, bidirectional=True, batch_first=True),
    "no_bias": dict(num_layers=1, bias=False),
}


def _models(cls_kwargs, input_size=7, hidden=12, seed=0):
    torch.manual_seed(seed)
    ours = LSTM(input_size, hidden, **cls_kwargs)
    theirs = nn.LSTM(input_size, hidden, **cls_kwargs)
    theirs.load_state_dict(ours.state_dict())
    reference = nn.LSTM(input_size, hidden, **cls_kwargs).double()
    reference.load_state_dict(ours.state_dict())
    return ours, theirs, reference


def _compare(ours, theirs, reference, run, dtype=torch.float32):
    """run(model, dtype) -> tensor; outputs and every parameter gradient against float64 (models in dtype)."""
    results = []
    for model, model_dtype in ((ours, dtype), (theirs, dtype), (reference, torch.float64)):
        out = run(model, model_dtype)
        out.float().square().sum().backward()
        results.append(out.detach())
    assert_close_to_reference("out", results[0], results[2], results[1], dtype)
    for (name, p), p_theirs, p_ref in zip(
        ours.named_parameters(), theirs.parameters(), reference.parameters(), strict=True
    ):
        assert_close_to_reference(f"grad of {name}", p.grad, p_ref.grad, p_theirs.grad, dtype)


def test_same_parameters_and_state_dict():
    ours, theirs, _ = _models(CONFIGS["2_layers_bidirectional_batch_first"])
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    assert "weight_hh_l1_reverse" in ours.state_dict()
    nn.LSTM(7, 12, num_layers=2, bidirectional=True, batch_first=True).load_state_dict(ours.state_dict())
    projected = LSTM(7, 12, num_layers=2, bidirectional=True, proj_size=4)
    theirs = nn.LSTM(7, 12, num_layers=2, bidirectional=True, proj_size=4)
    assert list(projected.state_dict()) == list(theirs.state_dict())
    assert "weight_hr_l1_reverse" in projected.state_dict()
    theirs.load_state_dict(projected.state_dict())


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matches_nn_lstm(backend, config):
    ours, theirs, reference = _models(config)
    batch_first = config.get("batch_first", False)
    directions = 2 if config.get("bidirectional") else 1
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 6, 7, generator=g)  # (T, B, I) or (B, T, I)
    h0 = torch.randn(config["num_layers"] * directions, 5 if batch_first else 6, 12, generator=g)
    c0 = torch.randn_like(h0)

    def run(model, dtype):
        with deepfuse.use_backend(backend):
            out, (h, c) = model(x.to(dtype), (h0.to(dtype), c0.to(dtype)))
        return torch.cat([out.flatten(), h.flatten(), c.flatten()])

    _compare(ours, theirs, reference, run)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_sequences(backend):
    ours, theirs, reference = _models(dict(num_layers=2, bidirectional=True))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 4, 7, generator=g)
    lengths = torch.tensor([3, 6, 1, 4])

    def run(model, dtype):
        packed = pack_padded_sequence(x.to(dtype), lengths, enforce_sorted=False)
        with deepfuse.use_backend(backend):
            out, (h, c) = model(packed)
        padded, out_lengths = pad_packed_sequence(out)
        assert torch.equal(out_lengths, lengths)
        return torch.cat([padded.flatten(), h.flatten(), c.flatten()])

    _compare(ours, theirs, reference, run)


def test_unbatched_input_default_state_and_dropout_in_eval():
    ours, theirs, _ = _models(dict(num_layers=2, dropout=0.5))
    ours.eval()
    theirs.eval()
    x = torch.randn(5, 7)
    with deepfuse.use_backend("triton"):
        out, (h, c) = ours(x)
    expected, (h_expected, c_expected) = theirs(x)
    assert out.shape == expected.shape and h.shape == h_expected.shape
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(c, c_expected)


def test_bad_state_shape_raises():
    ours, _, _ = _models(dict(num_layers=1))
    with deepfuse.use_backend("triton"), pytest.raises(ValueError, match=r"h_0 must have shape \(1, 6, 12\)"):
        ours(torch.randn(5, 6, 7), (torch.zeros(1, 5, 12), torch.zeros(1, 6, 12)))
    with deepfuse.use_backend("triton"), pytest.raises(ValueError, match="input_size=7"):
        ours(torch.randn(5, 6, 8))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lstm_cell_matches_nn_lstm_cell(backend):
    torch.manual_seed(3)
    ours = LSTMCell(7, 12)
    theirs = nn.LSTMCell(7, 12)
    theirs.load_state_dict(ours.state_dict())
    reference = nn.LSTMCell(7, 12).double()
    reference.load_state_dict(ours.state_dict())
    x, h, c = torch.randn(4, 7), torch.randn(4, 12), torch.randn(4, 12)

    def run(model, dtype):
        with deepfuse.use_backend(backend):
            h_next, c_next = model(x.to(dtype), (h.to(dtype), c.to(dtype)))
        return torch.cat([h_next.flatten(), c_next.flatten()])

    _compare(ours, theirs, reference, run)


def test_modules_compile_fullgraph():
    """Dynamo refuses every nn.LSTM (subclasses too) unless allow_rnn is set; LSTMCell needs nothing."""
    torch._dynamo.reset()
    ours, _, _ = _models(dict(num_layers=2, bidirectional=True))
    cell = LSTMCell(7, 12)
    x = torch.randn(5, 3, 7)
    with deepfuse.use_backend("triton"), torch._dynamo.config.patch(allow_rnn=True):
        out = torch.compile(ours, fullgraph=True)(x)[0]
        h, c = torch.compile(cell, fullgraph=True)(x[0])
        assert torch.equal(out, ours(x)[0])
        assert torch.equal(h, cell(x[0])[0]) and torch.equal(c, cell(x[0])[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_packed_bidirectional(backend, dtype):
    """The sentiment model's shape of use: 2 bidirectional layers over packed sequences, against cuDNN."""
    ours, theirs, reference = _models(dict(num_layers=2, bidirectional=True), input_size=64, hidden=64)
    ours, theirs, reference = ours.to("cuda", dtype), theirs.to("cuda", dtype), reference.to("cuda")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(40, 16, 64, generator=g).cuda()
    lengths = torch.randint(1, 41, (16,), generator=g)
    lengths[0] = 40

    def run(model, model_dtype):
        packed = pack_padded_sequence(x.to(model_dtype), lengths, enforce_sorted=False)
        with deepfuse.use_backend(backend):
            out, (h, c) = model(packed)
        padded, _ = pad_packed_sequence(out)
        return torch.cat([padded.flatten(), h.flatten(), c.flatten()])

    _compare(ours, theirs, reference, run, dtype)
