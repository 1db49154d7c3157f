"""The layer report: taken in train and eval mode, fallbacks with their reasons, no trace left on the model."""

import pytest
import torch
from torch import nn

import deepfuse
from deepfuse.nn import ConvBNAct, FusedLinear, TransformerEncoderLayer
from deepfuse.training.layers import layer_backends


def _rows(model, forward):
    return {name: ops for name, _, ops in layer_backends(model, forward)}


def test_a_training_only_fallback_is_reported_with_its_reason():
    """torch's default dropout 0.1: training runs torch's attention, eval the kernel; the report says both."""
    torch.manual_seed(0)
    model = nn.Sequential(TransformerEncoderLayer(8, 2, 16), FusedLinear(8, 2)).eval()
    src = torch.randn(5, 3, 8)
    rows = _rows(model, lambda: model(src))
    attention = rows["0.self_attn"]
    assert "attention: torch in eval" in attention
    assert (
        "multihead_attention: torch in training (attention dropout 0.1 in training: the flash kernels have no dropout)"
    ) in attention
    assert rows["1"] == "linear_act: torch"
    assert not model.training and not model[0].self_attn.training  # flags restored


def test_a_requested_backend_that_cannot_train_the_layer_fails_the_report():
    model = TransformerEncoderLayer(8, 2, 16).eval()
    src = torch.randn(5, 3, 8)
    with deepfuse.use_backend("triton"), pytest.raises(deepfuse.BackendUnavailableError, match="dropout 0.1"):
        layer_backends(model, lambda: model(src))


def test_the_train_mode_pass_changes_no_buffer_and_no_random_state():
    torch.manual_seed(1)
    model = nn.Sequential(ConvBNAct(2, 4, 3, padding=1), nn.Dropout(0.5), nn.Flatten(), FusedLinear(4 * 25, 3))
    model[0].eval()  # a frozen BatchNorm in a training model keeps its flag
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    x = torch.randn(2, 2, 5, 5)
    state = torch.random.get_rng_state()
    rows = _rows(model, lambda: model(x))
    assert rows == {"0": "conv2d_act: torch", "3": "linear_act: torch"}
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
    assert model.training and not model[0].training


def test_need_weights_reports_the_second_pass():
    from deepfuse.nn import MultiheadAttention

    model = MultiheadAttention(8, 2)
    x = torch.randn(5, 3, 8)
    with deepfuse.use_backend("triton"):
        rows = _rows(model, lambda: model(x, x, x))
    assert rows["(model)"] == (
        "attention: triton, attention_weights: torch (need_weights=True: the weights come "
        "from a second pass in torch ops), linear_act: triton"
    )
