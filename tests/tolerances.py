"""The one tolerance table, and the comparison rule every kernel test uses.

Rule (matmul-like ops): the kernel's max error against the float64 reference may be at most twice the
error of torch's own computation in the same dtype, plus the dtype's small absolute slack below.
Never widen an entry to make a test pass: find out why the error grew.
"""

import torch

ATOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}


def max_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    if value.numel() == 0:
        return 0.0
    return (value.double() - reference.double()).abs().max().item()


def assert_close_to_reference(
    name: str, value: torch.Tensor, reference: torch.Tensor, torch_value: torch.Tensor, dtype: torch.dtype
) -> None:
    """``value`` (kernel, in ``dtype``) vs ``reference`` (float64), with torch's ``torch_value`` as the yardstick."""
    assert value.shape == reference.shape, f"{name}: shape {tuple(value.shape)} != {tuple(reference.shape)}"
    assert value.dtype == dtype, f"{name}: dtype {value.dtype}, expected {dtype}"
    assert not torch.isnan(value).any(), f"{name}: NaN in output (an unwritten element, or a numerical failure)"
    error, torch_error = max_error(value, reference), max_error(torch_value, reference)
    bound = 2 * torch_error + ATOL[dtype]
    assert error <= bound, f"{name}: max error {error:.3e} > bound {bound:.3e} (torch's own error {torch_error:.3e})"
