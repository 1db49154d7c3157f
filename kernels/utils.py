"""Helpers shared by the launchers (Triton and the CUDA twins)."""

import os

import torch

# Debug switch (and what the tests turn on): outputs start as NaN, so an element a kernel forgot to write shows.
POISON_OUTPUTS = os.environ.get("DEEPFUSE_POISON_OUTPUTS", "0") == "1"


def empty_output(
    shape, like: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format
) -> torch.Tensor:
    out = torch.empty(shape, device=like.device, dtype=like.dtype, memory_format=memory_format)
    if POISON_OUTPUTS and out.is_floating_point():
        out.fill_(float("nan"))
    return out
