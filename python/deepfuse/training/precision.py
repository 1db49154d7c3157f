"""Which precision a run trains in: ``--amp auto`` resolved for the device it runs on.

``auto`` is bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 or AMX: its bf16 GEMMs run several
times faster than fp32 ones) and fp32 everywhere else — a CPU without those instructions only emulates bf16, and
on a GPU the choice stays the user's (``--amp bf16``). ``fp32`` means no autocast. The resolved value is what the
run records (config.json, checkpoints), never ``auto``.
"""

from __future__ import annotations

import torch

AUTO = "auto"
FP32 = "fp32"


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic instructions (x86 AVX512-BF16 or AMX tiles), as torch detects them."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def resolve_amp(amp: str | None, device: torch.device) -> tuple[str | None, str | None]:
    """``(amp, note)``: the autocast setting to run with (None: fp32) and, for ``auto``, a line saying what was
    chosen and why (None otherwise)."""
    if amp == FP32:
        return None, None
    if amp != AUTO:
        return amp, None
    if device.type == "cpu" and native_bf16_cpu():
        return "bf16", "precision: bf16 autocast (--amp auto: this CPU computes bf16 natively; --amp fp32 to turn off)"
    where = "this CPU has no native bf16" if device.type == "cpu" else f"on {device.type}, pass --amp bf16 to use it"
    return None, f"precision: fp32 (--amp auto: {where})"
