"""Small helpers every op file uses: autocast casting, output placeholders, raw pointers and the device capability
for deepfuse._C."""

import torch

_any_autocast = torch._C._is_any_autocast_enabled


def autocast_inputs(*tensors: torch.Tensor | None) -> tuple:
    """Casts the tensors to the autocast dtype when autocast is on for their device (as F.linear/F.conv2d do)."""
    if not _any_autocast():  # one cheap call on the common path
        return tensors
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    # As autocast's own casts: float64 is never lowered.
    return tuple(t.to(dtype) if t is not None and t.dtype != torch.float64 else t for t in tensors)


def nothing(like: torch.Tensor) -> torch.Tensor:
    """Placeholder for an output not asked for; a fresh one each time, as custom-op outputs may not alias."""
    return like.new_empty((0,))


def pointer(t: torch.Tensor | None) -> int:
    """The device address deepfuse._C takes; 0 for absent or empty tensors."""
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def device_capability(device: torch.device) -> int:
    """major * 10 + minor, as deepfuse._C's kernel choices take it (90: H100/H200)."""
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor
