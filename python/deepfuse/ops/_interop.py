"""cupy arrays in, cupy arrays out: ops convert them zero-copy through DLPack.

cupy is optional (``pip install deepfuse[cupy]``); nothing here imports it unless a cupy array arrives.
"""

import functools

import torch


def is_cupy_array(value) -> bool:
    return type(value).__module__.partition(".")[0] == "cupy"


def _to_cupy(value):
    if isinstance(value, torch.Tensor):
        import cupy

        return cupy.from_dlpack(value.detach())
    if isinstance(value, tuple):
        return tuple(_to_cupy(v) for v in value)
    return value


# Argument types that are never cupy arrays: checked first, so a plain call costs a set lookup per argument.
_NOT_CUPY = {torch.Tensor, torch.nn.Parameter, type(None), str, int, float, bool}


def _any_cupy(args: tuple, kwargs: dict) -> bool:
    for value in args:
        if value.__class__ not in _NOT_CUPY and is_cupy_array(value):
            return True
    return any(value.__class__ not in _NOT_CUPY and is_cupy_array(value) for value in kwargs.values())


def accepts_cupy(op):
    """Lets ``op`` take cupy arrays for any tensor argument; its tensors then come back as cupy arrays."""

    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        # torch.compile traces tensors only, so there is nothing to convert while compiling.
        if torch.compiler.is_compiling() or not _any_cupy(args, kwargs):
            return op(*args, **kwargs)
        args = tuple(torch.from_dlpack(v) if is_cupy_array(v) else v for v in args)
        kwargs = {k: torch.from_dlpack(v) if is_cupy_array(v) else v for k, v in kwargs.items()}
        return _to_cupy(op(*args, **kwargs))

    return wrapper
