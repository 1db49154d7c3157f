"""Running an op and its torch spec side by side, forward and backward, against a float64 reference."""

from tests.tolerances import assert_close_to_reference


def forward_backward(fn, tensors, dy):
    """fn(*tensors) and the gradients of <fn(...), dy> for every tensor that is not None."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [t.grad if t is not None else None for t in leaves]


def check_against_reference(ours, spec, tensors, dy, names):
    """``ours`` vs the float64 run of ``spec``, with ``spec`` in the inputs' dtype as the yardstick."""
    dtype = next(t for t in tensors if t is not None).dtype
    out, grads = forward_backward(ours, tensors, dy)
    spec_out, spec_grads = forward_backward(spec, tensors, dy)
    up = [t.double() if t is not None else None for t in tensors]
    ref_out, ref_grads = forward_backward(spec, up, dy.double())
    assert_close_to_reference("y", out, ref_out, spec_out, dtype)
    for name, got, theirs, expected in zip(names, grads, spec_grads, ref_grads, strict=True):
        if expected is not None:
            assert_close_to_reference(f"d{name}", got, expected, theirs, dtype)
    return out, grads
