"""torch.compile(fullgraph=True) runs through deepfuse ops without graph breaks, forward and backward.

On the kernel backends the compiled graph calls the same custom ops as eager mode, so its results must equal
eager's bit for bit; the torch backend is plain torch code that the compiler traces and may fuse, so it equals
eager to rounding (eager itself is checked against float64 in tests/ops)."""

import copy

import pytest
import torch

import deepfuse
from deepfuse.nn import FusedLinear


def _forward_backward(model, x):
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad for p in model.parameters()]


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_layers_compile_fullgraph_and_equal_eager(backend, compiler):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(FusedLinear(12, 24, activation="gelu"), FusedLinear(24, 5, activation="sigmoid"))
    eager_model = copy.deepcopy(model)
    x = torch.randn(7, 12)
    with deepfuse.use_backend(backend):
        compiled_out, compiled_grads = _forward_backward(torch.compile(model, fullgraph=True, backend=compiler), x)
        eager_out, eager_grads = _forward_backward(eager_model, x)
    same = torch.equal if backend != "torch" else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert same(compiled_out, eager_out)
    for got, expected in zip(compiled_grads, eager_grads, strict=True):
        assert got is not None and same(got, expected)


def test_op_with_input_gradient_compiles_fullgraph():
    torch._dynamo.reset()
    x, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    grads = []
    op = deepfuse.ops.linear_act
    for fn in (op, torch.compile(op, fullgraph=True)):
        x_leaf, w_leaf = x.clone().requires_grad_(), w.clone().requires_grad_()
        fn(x_leaf, w_leaf, b, "silu", backend="triton").sum().backward()
        grads.append((x_leaf.grad, w_leaf.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
