"""Ahead-of-time compilation of recorded launches for the H200 (sm_90), with the resources ptxas reports and the
SASS markers of the cubin (nvdisasm from Triton's wheel); results are cached on disk between runs (ResultCache)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    markers: dict = field(default_factory=dict)  # SASS instruction -> count (MARKERS)
    performance_loss: str = ""  # ptxas' "Potential Performance Loss" lines, if any
    cached: bool = False  # read from ResultCache, not compiled in this run


# SASS instructions that say which hardware path a kernel took (PLATFORM.md, "Hopper-native code"): HGMMA =
# wgmma, HMMA = the Ampere mma.sync path, UTMALDG/UTMASTG = TMA loads/stores, LDGSTS = cp.async, USETMAXREG =
# warp specialisation's register split, SYNCS = mbarrier.
MARKERS = ("HGMMA", "HMMA", "UTMALDG", "UTMASTG", "LDGSTS", "USETMAXREG", "SYNCS")


def sass_markers(cubin: bytes) -> dict:
    """Counts of MARKERS in a cubin's SASS (nvdisasm of Triton's wheel; no GPU needed)."""
    import triton

    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        sass = subprocess.run([str(nvdisasm), "-c", file.name], capture_output=True, text=True, check=True).stdout
    opcodes = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass, re.MULTILINE)
    counts = {}
    for opcode in opcodes:
        if opcode in MARKERS:
            counts[opcode] = counts.get(opcode, 0) + 1
    return counts


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
    loss = "\n".join(line.strip() for line in log.getvalue().splitlines() if "Potential Performance Loss" in line)
    return Compiled(
        compiled.metadata.shared + static_shared,
        registers,
        stores,
        loads,
        time.perf_counter() - start,
        markers=sass_markers(compiled.asm["cubin"]),
        performance_loss=loss,
    )


class ResultCache:
    """Compile results on disk, outside the repository (~/.cache/deepfuse/compile_gate unless
    DEEPFUSE_COMPILE_GATE_CACHE says where), keyed by the kernel's source (Triton's cache_key: its body, the jit
    functions and globals it uses), the launch's specialisation and options (Triton's key), the Triton version
    and this file (what a result holds). A failed compile is never stored: it is retried every run."""

    def __init__(self, directory: str | None = None):
        import triton

        default = Path.home() / ".cache" / "deepfuse" / "compile_gate"
        self.directory = Path(directory or os.environ.get("DEEPFUSE_COMPILE_GATE_CACHE") or default)
        self.salt = triton.__version__ + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()

    def _path(self, launch: Launch) -> Path:
        text = "\0".join((self.salt, launch.kernel, launch.fn.cache_key, launch.key))
        return self.directory / (hashlib.sha256(text.encode()).hexdigest() + ".json")

    def get(self, launch: Launch) -> Compiled | None:
        try:
            stored = json.loads(self._path(launch).read_text())
        except (OSError, ValueError):
            return None
        return Compiled(**{**stored, "cached": True})

    def put(self, launch: Launch, result: Compiled) -> None:
        if result.error:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(launch)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(dataclasses.asdict(result)))
        scratch.replace(path)  # atomic: parallel jobs and runs never read half a file
