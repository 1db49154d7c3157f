"""Argument checks shared by the ops: errors name the argument and say what was expected."""

import torch

from deepfuse.backend import KERNEL_DTYPES

FLOAT_DTYPES = (*KERNEL_DTYPES, torch.float64)


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


_FLOAT_DTYPES = frozenset(FLOAT_DTYPES)
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def check_tensor(name: str, value, *, ndim: int | None = None, min_ndim: int | None = None) -> None:
    if (value.__class__ is torch.Tensor or value.__class__ is torch.nn.Parameter) and value.dtype in _FLOAT_DTYPES:
        ndims = value.ndim
        if (ndim is None or ndims == ndim) and (min_ndim is None or ndims >= min_ndim):
            return  # the common case, checked in few steps: this runs on every op call
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (or a cupy array), got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor ({_dtype_names(FLOAT_DTYPES)}), got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")


def check_same_dtype_and_device(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    # get_device(): -1 on the CPU (and on meta), else the index; is_meta tells those two apart.
    dtype, device_index, meta = reference.dtype, reference.get_device(), reference.is_meta
    for value in others.values():
        if value is not None and (value.dtype != dtype or value.get_device() != device_index or value.is_meta != meta):
            break
    else:
        return  # the common case, without building device objects
    for name, value in others.items():
        if value is None:
            continue
        if value.device != reference.device:
            raise ValueError(f"{name} is on {value.device} but {reference_name} is on {reference.device}")
        if value.dtype != reference.dtype:
            raise TypeError(
                f"{name}.dtype is {value.dtype} but {reference_name}.dtype is {reference.dtype}; they must match"
            )


def kernel_dtype_reason(name: str, tensor: torch.Tensor) -> str | None:
    """Why the triton/cuda kernels cannot take this dtype, or None."""
    if tensor.dtype in KERNEL_DTYPES:
        return None
    return f"{name}.dtype is {tensor.dtype}; the kernels take {_dtype_names(KERNEL_DTYPES)} (torch runs float64)"
