"""The host path every op takes (ops/_dispatch.py): the direct eager path and the custom op compute the same thing;
the custom op is used whenever something traces or intercepts the call; the torch backend is torch's own autograd."""

import importlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deepfuse
from deepfuse.ops import attention, attention_varlen, conv2d_act, linear_act, lstm_cell, lstm_layer

linear_act_module = importlib.import_module("deepfuse.ops.linear_act")


def _leaves(*shapes, generator):
    return [torch.randn(*shape, generator=generator).requires_grad_() for shape in shapes]


def _op_calls(backend):
    """(name, call(*leaves), leaf shapes) of one small call per public op."""
    return [
        ("linear_act", lambda x, w, b: linear_act(x, w, b, "gelu", backend=backend), [(5, 7), (3, 7), (3,)]),
        (
            "conv2d_act",
            lambda x, w, b: conv2d_act(x, w, b, padding=1, activation="silu", backend=backend),
            [(2, 3, 5, 6), (4, 3, 3, 3), (4,)],
        ),
        (
            "attention",
            lambda q, k, v: attention(q, k, v, causal=True, backend=backend),
            [(2, 4, 9, 16), (2, 2, 11, 16), (2, 2, 11, 16)],
        ),
        (
            "lstm_cell",
            lambda x, h, c, w_ih, w_hh: torch.cat(lstm_cell(x, h, c, w_ih, w_hh, backend=backend), -1),
            [(3, 5), (3, 6), (3, 6), (24, 5), (24, 6)],
        ),
        (
            "lstm_layer",
            lambda x, h, c, w_ih, w_hh: lstm_layer(x, h, c, w_ih, w_hh, backend=backend)[0],
            [(4, 3, 5), (3, 6), (3, 6), (24, 5), (24, 6)],
        ),
    ]


def _forward_backward(call, shapes, seed):
    generator = torch.Generator().manual_seed(seed)
    leaves = _leaves(*shapes, generator=generator)
    out = call(*leaves)
    out.backward(torch.randn(out.shape, generator=generator))
    return out.detach(), [leaf.grad for leaf in leaves]


class _Recorder(TorchDispatchMode):
    """Records every op that reaches the Python dispatcher."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("index", range(5), ids=[name for name, *_ in _op_calls("triton")])
def test_eager_path_equals_the_custom_op_bitwise(index):
    """The triton backend (interpreter here): the direct path and the custom op run the same kernels."""
    name, call, shapes = _op_calls("triton")[index]
    eager_out, eager_grads = _forward_backward(call, shapes, seed=index)
    with _Recorder() as recorder:  # any dispatch mode sends the call through the registered custom op
        traced_out, traced_grads = _forward_backward(call, shapes, seed=index)
    assert any(op.startswith("deepfuse.") for op in recorder.ops), recorder.ops
    assert torch.equal(eager_out, traced_out)
    for eager_grad, traced_grad in zip(eager_grads, traced_grads, strict=True):
        assert torch.equal(eager_grad, traced_grad)


def test_eager_path_skips_the_dispatcher_and_backward_is_its_own_function():
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6)
    y = linear_act(x, w, None, "tanh", backend="triton")
    grad_fn = y.grad_fn.next_functions[0][0]  # behind the reshape to x's leading dims
    assert type(grad_fn).__name__ == "linear_act_fwd_functionBackward"
    with _Recorder():
        y_traced = linear_act(x, w, None, "tanh", backend="triton")
    assert type(y_traced.grad_fn.next_functions[0][0]).__name__ != "linear_act_fwd_functionBackward"


def test_double_backward_through_a_kernel_is_refused_clearly():
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6, requires_grad=True)
    y = linear_act(x, w, None, "gelu", backend="triton")
    (grad_x,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|does not require grad"):
        grad_x.sum().backward()


@pytest.mark.parametrize("index", range(5), ids=[name for name, *_ in _op_calls("torch")])
def test_torch_backend_is_torch_autograd(index):
    """The torch backend runs torch's own ops, also under a dispatch mode: no deepfuse custom op, no deepfuse
    autograd.Function (its numerics against the float64 specs: test_<op>.py's test_matches_reference_* [torch])."""
    name, call, shapes = _op_calls("torch")[index]
    with _Recorder() as recorder:
        out, grads = _forward_backward(call, shapes, seed=index)
    assert recorder.ops and not any(op.startswith("deepfuse.") for op in recorder.ops), recorder.ops
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    # Without a mode too: the output's autograd node is torch's own, not a deepfuse autograd.Function.
    leaves = _leaves(*shapes, generator=torch.Generator().manual_seed(index))
    grad_fn = call(*leaves).grad_fn
    assert grad_fn is not None and "_function" not in type(grad_fn).__name__, type(grad_fn).__name__


def test_varlen_torch_backend_matches_each_sequence_alone():
    generator = torch.Generator().manual_seed(3)
    lengths = [5, 0, 1, 7]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lengths), 2, 8, generator=generator) for _ in range(3))
    out = attention_varlen(q, k, v, cu, cu, max(lengths), max(lengths), causal=True)
    for i, length in enumerate(lengths):
        rows = slice(int(cu[i]), int(cu[i + 1]))
        alone = attention(*(t[rows].transpose(0, 1)[None] for t in (q, k, v)), causal=True)
        torch.testing.assert_close(out[rows], alone[0].transpose(0, 1))
        assert length == out[rows].shape[0]


def test_fully_masked_queries_are_zero_with_zero_gradients_on_the_torch_backend():
    q, k, v = (torch.randn(2, 2, 4, 8, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True, True, True], [False, True, True, False]])
    out = attention(q, k, v, key_padding_mask=mask)
    out.sum().backward()
    assert torch.equal(out[0], torch.zeros_like(out[0])) and not out.isnan().any()
    assert torch.equal(q.grad[0], torch.zeros_like(q.grad[0])) and not k.grad.isnan().any()


def test_cpu_autocast_bf16_takes_mixed_dtypes_like_torch():
    """A bf16 activation meeting fp32 weights under CPU autocast (what --amp bf16 does) runs as F.linear does."""
    x = torch.randn(4, 6).bfloat16()
    w, b = torch.randn(3, 6), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear_act(x, w, b, "relu")
        expected = torch.relu(torch.nn.functional.linear(x, w, b))
        z = conv2d_act(torch.randn(1, 2, 5, 5).bfloat16(), torch.randn(3, 2, 3, 3), None, activation="relu")
    assert y.dtype == torch.bfloat16 and z.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)


def test_profiler_sees_labelled_ops_on_every_path():
    x, w = torch.randn(4, 6), torch.randn(3, 6)
    with torch.profiler.profile() as profile:
        linear_act(x, w, None, "relu")
        linear_act(x, w, None, "relu", backend="triton")
    names = {event.name for event in profile.events()}
    assert any(name.startswith("deepfuse::linear_act_fwd[torch] flops=144") for name in names), names
    assert any(name.startswith("deepfuse::linear_act_fwd[triton] flops=144") for name in names), names


def test_automatic_choice_is_recorded_on_the_fast_path():
    with deepfuse.backend.record_choices() as log:
        linear_act(torch.randn(2, 3), torch.randn(4, 3))
    assert list(log) == [("linear_act", "torch")]


def test_varlen_checks_on_a_gpu_are_queued_on_the_device_and_still_fail():
    """The device-side cu_seqlens checks (run here on CPU tensors, where _assert_async raises at once)."""
    check = importlib.import_module("deepfuse.ops.attention")._check_cu_seqlens_on_device
    check("cu_seqlens_q", torch.tensor([0, 3, 5], dtype=torch.int32), 5, 3)  # valid: nothing raised
    for bad, max_len in (([0, 3, 4], 3), ([1, 3, 5], 3), ([0, 4, 2, 5], 4), ([0, 4, 5], 3)):
        with pytest.raises(RuntimeError, match="cu_seqlens_q must rise from 0 to the token count 5"):
            check("cu_seqlens_q", torch.tensor(bad, dtype=torch.int32), 5, max_len)
