"""conv2d_act backward on sm_90a (csrc/grad_preact.cu's dz and db, then CUTLASS's dgrad and wgrad of
csrc/conv2d_act_bwd_sm90.cu) through the public op on the cuda backend with channels_last tensors: gradients against
the float64 specification, against torch in the same dtype (the error yardstick) and against the WMMA kernels the
same device runs for NCHW tensors. Needs a compute-capability 9.0 GPU (H100/H200); elsewhere these tests are
skipped."""

import pytest
import torch
import torch.nn.functional as F

import deepfuse
from deepfuse.ops.activations import ACTIVATIONS, activation_ref
from tests.ops.test_conv2d_act_sm90 import CASES, make_inputs, out_size
from tests.tolerances import ATOL, assert_close_to_reference, max_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
        reason="the sm_90a kernels run on compute capability 9.0 only",
    ),
]


def gradients(x, w, b, r, dy, activation, geometry, dtype=None, backend=None):
    """(dx, dW, db, dr) of act(conv2d(x, w, b) + r) for the upstream gradient dy: through deepfuse's op on
    `backend`, or through torch's own ops in `dtype` (float64: the specification)."""
    stride, padding, dilation = geometry
    leaves = [t if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in (x, w, b, r)]
    xl, wl, bl, rl = leaves
    if backend is None:
        z = F.conv2d(xl, wl, bl, stride, padding, dilation)
        y = activation_ref(z if rl is None else z + rl, activation)
    else:
        y = deepfuse.ops.conv2d_act(
            xl, wl, bl, stride, padding, dilation, activation=activation, residual=rl, backend=backend
        )
    y.backward(dy.to(y.dtype))
    return [None if t is None else t.grad for t in leaves]


def explain_backward(x, w, b, r, activation, geometry):
    stride, padding, dilation = geometry
    leaves = [t if t is None else t.detach().requires_grad_() for t in (x, w, b, r)]
    return str(
        deepfuse.explain(
            "conv2d_act",
            *leaves[:3],
            stride,
            padding,
            dilation,
            activation=activation,
            residual=leaves[3],
            backend="cuda",
        )
    )


def check(case, dtype, activation, bias, residual):
    *_, stride, padding, dilation = CASES[case]
    geometry = (stride, padding, dilation)
    x, w, b, r = make_inputs(case, dtype, bias, residual, seed=len(case) + 7)
    batch, _, height, width, out_channels, k = CASES[case][:6]
    y_shape = (batch, out_channels, *(out_size(n, k, stride, padding, dilation) for n in (height, width)))
    dy = torch.randn(y_shape, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    why = explain_backward(x, w, b, r, activation, geometry)
    assert "conv2d_act_wgrad_sm90_kernel" in why, why
    assert ("conv2d_act_dgrad_sm90_kernel" in why) == (stride == 1), why
    ours = gradients(x, w, b, r, dy, activation, geometry, backend="cuda")
    spec = gradients(x, w, b, r, dy, activation, geometry, dtype=torch.float64)
    same_dtype = gradients(x, w, b, r, dy, activation, geometry)
    assert ours[1].is_contiguous(memory_format=torch.channels_last)  # dW in W's layout, as torch gives it
    # NCHW tensors take the WMMA kernels for every gradient.
    nchw = [t if t is None else t.contiguous() for t in (x, w, b, r)]
    wmma = gradients(*nchw, dy.contiguous(), activation, geometry, backend="cuda")
    where = f"{case} {activation} {dtype} bias={bias} residual={residual}"
    for name, value, reference, torch_value, old in zip(
        ("dx", "dW", "db", "dresidual"), ours, spec, same_dtype, wmma, strict=True
    ):
        if value is None:
            continue
        assert_close_to_reference(f"{name} ({where})", value, reference, torch_value, dtype)
        bound = 2 * max_error(torch_value, reference) + ATOL[dtype]
        assert max_error(value, old) <= bound, f"{where}: {name} of sm_90a and WMMA differ by {max_error(value, old)}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_sm90_backward_matches_reference_and_the_wmma_kernels(case, dtype):
    check(case, dtype, "gelu", bias=True, residual=True)
    check(case, dtype, "none", bias=False, residual=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_sm90_backward_every_activation(activation, dtype):
    check("3x3_p1", dtype, activation, bias=True, residual=False)


def test_sm90_backward_is_deterministic():
    x, w, b, r = make_inputs("large", torch.bfloat16, bias=True, residual=False)
    geometry = CASES["large"][-3:]
    dy = torch.randn(8, 256, 28, 28, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    first = gradients(x, w, b, r, dy, "silu", geometry, backend="cuda")
    second = gradients(x, w, b, r, dy, "silu", geometry, backend="cuda")
    assert all(torch.equal(a, c) for a, c in zip(first[:3], second[:3], strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_sm90_takes_an_nchw_weight_beside_channels_last_x(dtype):
    """nn.Conv2d's weight is NCHW: the cuda backend passes a channels_last copy to the sm_90a kernels, and dW comes
    back in W's own layout."""
    x, w, b, r = make_inputs("3x3_p1", dtype, bias=True, residual=False, seed=11)
    w = w.contiguous()
    geometry = CASES["3x3_p1"][-3:]
    why = explain_backward(x, w, b, r, "gelu", geometry)
    assert "forward: conv2d_act_sm90_kernel" in why and "conv2d_act_wgrad_sm90_kernel" in why, why
    dy = torch.randn(3, 136, 13, 17, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    ours = gradients(x, w, b, r, dy, "gelu", geometry, backend="cuda")
    spec = gradients(x, w, b, r, dy, "gelu", geometry, dtype=torch.float64)
    same_dtype = gradients(x, w, b, r, dy, "gelu", geometry)
    assert ours[1].is_contiguous()
    for name, value, reference, torch_value in zip(("dx", "dW", "db"), ours, spec, same_dtype, strict=False):
        assert_close_to_reference(f"{name} ({dtype})", value, reference, torch_value, dtype)
