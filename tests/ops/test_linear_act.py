"""linear_act: every backend against a float64 reference, forward and backward; bad input; opcheck."""

import zlib

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import deepfuse
from deepfuse.ops import ACTIVATIONS, linear_act, linear_act_ref
from deepfuse.ops.linear_act import linear_act_bwd, linear_act_fwd
from tests.reference import check_against_reference as check_op_against_reference
from tests.reference import forward_backward as _forward_backward
from tests.tolerances import ATOL, assert_close_to_reference, max_error

# (M, N, K): primes, size-1 and non-multiples of the 32/64 blocks, K = 2^n + 17.
QUICK_SHAPES = [(37, 53, 29), (1, 17, 1), (70, 33, 81)]
# Layer shapes of the models (digits MLP head, sentiment FFN) and large cubes: GPU only.
GPU_SHAPES = [(37, 53, 29), (1, 17, 1), (128, 10, 64), (4096, 1024, 256), (2048, 2048, 2048 + 17), (4096, 4096, 4096)]


def make_inputs(M, N, K, dtype, device="cpu", bias=True, seed=0, leading=()):
    """Fresh random inputs scaled like nn.Linear (outputs O(1)); never zeros."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(*leading, M, K, generator=g, dtype=torch.float64)
    w = torch.randn(N, K, generator=g, dtype=torch.float64) / max(K, 1) ** 0.5
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None
    dy = torch.randn(*leading, M, N, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(w), cast(b), cast(dy)


def forward_backward(fn, x, w, b, dy):
    return _forward_backward(fn, (x, w, b), dy)


def check_against_reference(backend, x, w, b, dy, activation):
    check_op_against_reference(
        lambda *a: linear_act(*a, activation, backend=backend),
        lambda *a: linear_act_ref(*a, activation),
        (x, w, b),
        dy,
        ("x", "w", "b"),
    )


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_backend_backward_matches_autograd_in_float64(activation):
    # The torch backend's hand-written backward (activation_grad_ref) against autograd through the spec.
    x, w, b, dy = make_inputs(13, 11, 7, torch.float64, seed=1)
    x = x * 3  # reach the activations' tails
    ours, our_grads = forward_backward(lambda *a: linear_act(*a, activation, backend="torch"), x, w, b, dy)
    ref, ref_grads = forward_backward(lambda *a: linear_act_ref(*a, activation), x, w, b, dy)
    assert max_error(ours, ref) <= ATOL[torch.float64]
    for got, expected in zip(our_grads, ref_grads, strict=True):
        assert max_error(got, expected) <= 1e-10


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("shape", QUICK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_triton_matches_reference(activation, dtype, shape):
    x, w, b, dy = make_inputs(*shape, dtype, seed=zlib.crc32(f"{activation}{shape}".encode()))
    check_against_reference("triton", x, w, b, dy, activation)


# bf16 is not compared under the interpreter: it converts fp32 -> bf16 by truncation (the GPU rounds to nearest
# even), which alone puts results 1 ulp off; bf16 is covered by the GPU tests below.


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_no_bias_and_leading_dims(backend):
    x, w, _, dy = make_inputs(9, 21, 19, torch.float32, bias=False, leading=(2, 3), seed=4)
    check_against_reference(backend, x, w, None, dy, "silu")


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_non_contiguous_inputs(backend):
    x, w, b, dy = make_inputs(23, 31, 45, torch.float32, seed=5)
    x_t = x.t().contiguous().t()  # column-major x
    w_t = w.t().contiguous().t()  # column-major weight
    assert not x_t.is_contiguous() and not w_t.is_contiguous()
    check_against_reference(backend, x_t, w_t, b, dy, "tanh")
    x_sliced = torch.randn(23, 90)[:, ::2]  # strided rows and columns
    check_against_reference(backend, x_sliced, w, b, dy, "relu")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_batch(backend):
    x, w, b, _ = make_inputs(0, 5, 7, torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = linear_act(x, w, b, "gelu", backend=backend)
    assert y.shape == (0, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
    assert x.grad.shape == (0, 7)


@pytest.mark.usefixtures("poison_outputs")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_in_features_gives_activation_of_bias(backend):
    x, w, b, dy = make_inputs(6, 5, 0, torch.float32, seed=6)
    check_against_reference(backend, x, w, b, dy, "sigmoid")


def test_triton_forward_is_deterministic():
    x, w, b, dy = make_inputs(70, 33, 81, torch.float32, seed=7)
    first = forward_backward(lambda *a: linear_act(*a, "gelu_tanh", backend="triton"), x, w, b, dy)
    second = forward_backward(lambda *a: linear_act(*a, "gelu_tanh", backend="triton"), x, w, b, dy)
    assert torch.equal(first[0], second[0])
    for a, b_ in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_only_requested_gradients_are_computed(backend):
    x, w, b, dy = make_inputs(8, 6, 5, torch.float32, seed=8)
    w.requires_grad_()
    y = linear_act(x, w, b, "relu", backend=backend)
    y.backward(dy)
    assert w.grad is not None and x.grad is None and b.grad is None
    w_torch, w_ref = w.detach().clone().requires_grad_(), w.detach().double().requires_grad_()
    linear_act_ref(x, w_torch, b, "relu").backward(dy)
    linear_act_ref(x.double(), w_ref, b.double(), "relu").backward(dy.double())
    assert_close_to_reference("dw", w.grad, w_ref.grad, w_torch.grad, torch.float32)


def test_autocast_runs_in_the_autocast_dtype():
    x, w, b, _ = make_inputs(16, 8, 12, torch.float32, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = linear_act(x, w, b, "relu")
        expected = F.relu(F.linear(x, w, b))
    assert y.dtype == torch.bfloat16 == expected.dtype
    assert torch.equal(y, expected)


# --------------------------------------------------------------------------------------------- bad input


def _bad_input_cases():
    x, w, b, _ = make_inputs(4, 3, 5, torch.float32)
    return [
        (dict(x=x, weight=w[:, :4], bias=b), ValueError, r"weight must have shape \(out_features, in_features=5\)"),
        (dict(x=x, weight=w[0], bias=b), ValueError, r"weight must be 2-D"),
        (dict(x=x, weight=w, bias=b[:2]), ValueError, r"bias must have shape \(out_features=3,\)"),
        (dict(x=x, weight=w, bias=b[None]), ValueError, r"bias must be 1-D"),
        (dict(x=x.to(torch.int64), weight=w, bias=b), TypeError, r"x must be a floating-point tensor"),
        (dict(x=x, weight=w.half(), bias=b), TypeError, r"weight.dtype is torch.float16 but x.dtype is torch.float32"),
        (dict(x=x, weight=w, bias=b.to("meta")), ValueError, r"bias is on meta but x is on cpu"),
        (dict(x=x.tolist(), weight=w, bias=b), TypeError, r"x must be a torch.Tensor"),
        (dict(x=torch.tensor(1.0), weight=w, bias=b), ValueError, r"x must have at least 1 dimension"),
        (dict(x=x, weight=w, bias=b, activation="swish"), ValueError, r"activation must be one of 'none'"),
        (dict(x=x, weight=w, bias=b, backend="cudnn"), ValueError, r"backend must be one of 'torch', 'triton', 'cuda'"),
        (dict(x=x, weight=w, bias=b, backend="cuda"), deepfuse.BackendUnavailableError, r"backend 'cuda'.*cannot run"),
        (
            dict(x=x.double(), weight=w.double(), bias=b.double(), backend="triton"),
            deepfuse.BackendUnavailableError,
            r"x.dtype is torch.float64",
        ),
    ]


@pytest.mark.parametrize("case", range(len(_bad_input_cases())))
def test_bad_input_raises_a_clear_error(case):
    kwargs, error, message = _bad_input_cases()[case]
    with pytest.raises(error, match=message):
        linear_act(**kwargs)


def test_float64_runs_on_the_torch_backend():
    x, w, b, _ = make_inputs(4, 3, 5, torch.float64)
    assert torch.equal(linear_act(x, w, b, "tanh"), linear_act_ref(x, w, b, "tanh"))


# --------------------------------------------------------------------------------------------- custom ops


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
def test_opcheck(backend, activation):
    x, w, b, dy = make_inputs(6, 5, 7, torch.float32, seed=10)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    save_preact = activation == "gelu"
    opcheck(linear_act_fwd.custom_op, (x, w, b, activation, save_preact, backend))
    opcheck(linear_act_fwd.custom_op, (x, w, None, activation, save_preact, backend))
    saved = torch.randn(6, 5)
    opcheck(linear_act_bwd.custom_op, (dy, saved, x.detach(), w.detach(), activation, True, True, True, backend))
    opcheck(linear_act_bwd.custom_op, (dy, saved, x.detach(), w.detach(), activation, False, False, True, backend))


# --------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("activation", ["none", "relu", "gelu", "silu", "tanh"])
def test_gpu_backends_match_reference(backend, activation, dtype, shape, poison_outputs):
    x, w, b, dy = make_inputs(*shape, dtype, device="cuda", seed=11)
    check_against_reference(backend, x, w, b, dy, activation)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_non_contiguous_and_deterministic(backend):
    x, w, b, dy = make_inputs(300, 257, 129, torch.bfloat16, device="cuda", seed=12)
    check_against_reference(backend, x.t().contiguous().t(), w.t().contiguous().t(), b, dy, "gelu_tanh")
    first = forward_backward(lambda *a: linear_act(*a, "silu", backend=backend), x, w, b, dy)
    second = forward_backward(lambda *a: linear_act(*a, "silu", backend=backend), x, w, b, dy)
    assert torch.equal(first[0], second[0])
    for a, b_ in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b_)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_edge_shapes(backend, poison_outputs):
    # empty batch, no input features (y = act(b)), one row, one output, frozen weight with a trainable bias
    for shape in [(0, 5, 7), (6, 5, 0), (1, 1, 1), (3, 1, 300)]:
        x, w, b, dy = make_inputs(*shape, torch.float16, device="cuda", seed=15)
        check_against_reference(backend, x, w, b, dy, "sigmoid")
    x, w, b, dy = make_inputs(33, 17, 40, torch.float16, device="cuda", seed=16)
    b.requires_grad_()
    linear_act(x, w, b, "gelu", backend=backend).backward(dy)
    b64 = b.detach().double().requires_grad_()
    linear_act_ref(x.double(), w.double(), b64, "gelu").backward(dy.double())
    b16 = b.detach().clone().requires_grad_()
    linear_act_ref(x, w, b16, "gelu").backward(dy)
    assert_close_to_reference("db", b.grad, b64.grad, b16.grad, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_opcheck(backend):
    x, w, b, dy = make_inputs(33, 17, 40, torch.float16, device="cuda", seed=13)
    opcheck(linear_act_fwd.custom_op, (x.requires_grad_(), w, b, "gelu", True, backend))
    opcheck(linear_act_bwd.custom_op, (dy, torch.randn_like(dy), x.detach(), w, "gelu", True, True, True, backend))


@pytest.mark.gpu
def test_gpu_cupy_arrays_in_and_out():
    cupy = pytest.importorskip("cupy")
    x, w, b, _ = make_inputs(33, 17, 40, torch.float16, device="cuda", seed=14)
    y = linear_act(cupy.from_dlpack(x), cupy.from_dlpack(w), cupy.from_dlpack(b), "relu")
    assert isinstance(y, cupy.ndarray)
    assert torch.equal(torch.from_dlpack(y), linear_act(x, w, b, "relu"))
