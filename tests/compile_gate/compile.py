"""Ahead-of-time compilation of recorded launches for the H200 (sm_90), with the resources ptxas reports."""

from __future__ import annotations

import contextlib
import io
import re
import time
from dataclasses import dataclass

from .device import Launch

# sm_90: 227 KiB of shared memory per block with the opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize),
# 255 registers per thread.
MAX_SHARED_BYTES = 232_448
MAX_REGISTERS = 255


@dataclass
class Compiled:
    shared: int = 0  # dynamic (Triton's) + static (ptxas) shared memory per block, bytes
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    seconds: float = 0.0
    error: str = ""  # the compiler's message when it failed


def _ptxas_numbers(log: str) -> tuple[int, int, int, int]:
    """(registers, spill store bytes, spill load bytes, static shared bytes) from a ptxas -v log."""

    def total(pattern):
        return sum(int(n) for n in re.findall(pattern, log))

    registers = max((int(n) for n in re.findall(r"Used (\d+) registers", log)), default=0)
    return registers, total(r"(\d+) bytes spill stores"), total(r"(\d+) bytes spill loads"), total(r"(\d+) bytes smem")


def compile_launch(launch: Launch) -> Compiled:
    """triton.compile for GPUTarget("cuda", 90, 32) with the launch's specialisation and options; Triton's own
    ptxas -v log is captured (one ptxas run)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    start = time.perf_counter()
    source = ASTSource(fn=launch.fn, signature=launch.signature, constexprs=launch.constexprs, attrs=launch.attrs)
    log = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report; we read it instead of running ptxas twice
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(launch.options))
    except Exception as error:  # noqa: BLE001 - every compiler failure is a gate failure, reported by message
        message = f"{type(error).__name__}: {error}"
        return Compiled(seconds=time.perf_counter() - start, error=message.strip()[-1500:])
    registers, stores, loads, static_shared = _ptxas_numbers(log.getvalue())
    return Compiled(compiled.metadata.shared + static_shared, registers, stores, loads, time.perf_counter() - start)
