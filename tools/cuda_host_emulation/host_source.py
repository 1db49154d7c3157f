"""Turns any csrc/*.cu file into host C++ for shim.h: the kernels and launchers unchanged, only CUDA's GPU-only
syntax rewritten, the same way for every file:

- ``#include <mma.h>`` / ``<cooperative_groups.h>`` dropped (shim.h provides both);
- ``extern __shared__ unsigned char smem[];`` -> the block's dynamic shared memory (``shim::t_block->smem``);
- ``__shared__ T name[N]...;`` -> ``auto& name = shim::static_shared<T[N]...>();`` (one array per block);
- ``kernel<<<grid, block, smem, stream>>>(args);`` (``kernel<T>`` too) -> ``shim::launch_cfg(kernel, grid, block, smem,
  stream, args);``.

The CUDA runtime calls the launchers make are answered by cudart_stubs.inc. Files that need Hopper-only hardware
(CUTLASS / CuTe, wgmma, setmaxnreg: the ``*_sm90.cu`` kernels) have no host emulation: ``hopper_only`` says why,
and the runner skips them. Of conv_sm90_common.cuh, which includes CuTe, the CUTLASS-free checks are cut out
(``conv_sm90_checks``) for the stand-ins of the conv backward's refusals (sm90_standins.cpp).
"""

from __future__ import annotations

import re
from pathlib import Path

HOPPER_MARKERS = ("#include <cute/", "#include <cutlass/", "wgmma.mma_async", "setmaxnreg.", "cp.async.bulk")

# conv_sm90_common.cuh's CUTLASS-free part lies between these two seams (inside namespace conv_sm90).
CONV_SM90_CHECKS = ("namespace conv_sm90 {\n", "// CUTLASS's problem shape")

_DYNAMIC_SHARED = re.compile(r"extern __shared__ (?:__align__\(\d+\) )?unsigned char (\w+)\[\];")
_STATIC_SHARED = re.compile(r"__shared__ (?:__align__\(\d+\) )?([\w:<>, ]+?) (\w+)((?:\[[^\]\n]+\])+);")
_LAUNCH = re.compile(r"([\w:]+(?:<[\w:, ]+>)?)<<<([^;]*?)>>>\(([^;]*?)\);")


def hopper_only(cu: Path) -> str | None:
    """Why ``cu`` cannot be built for the host, or None when it can."""
    text = cu.read_text()
    found = [marker for marker in HOPPER_MARKERS if marker in text]
    if cu.name.endswith("_sm90.cu") or found:
        return f"{cu.name}: sm_90a-only code ({', '.join(found) or '*_sm90.cu'}); no host emulation"
    return None


def host_text(text: str) -> str:
    """The source with CUDA's GPU-only syntax rewritten for shim.h (see the module docstring)."""
    text = re.sub(r"#include <(?:mma|cooperative_groups)\.h>\n", "", text)
    text = _DYNAMIC_SHARED.sub(r"unsigned char* \1 = shim::t_block->smem;", text)
    text = _STATIC_SHARED.sub(r"auto& \2 = shim::static_shared<\1\3>();", text)
    text = _LAUNCH.sub(r"shim::launch_cfg(\1, \2, \3);", text)
    for left in ("__shared__", "<<<"):
        if left in text:
            line = next(line for line in text.splitlines() if left in line)
            raise ValueError(f"host_source: a {left} form the rewrite does not know: {line.strip()!r}")
    return text


def host_source(cu: Path) -> str:
    """``cu`` as a host C++ translation unit (shim.h first)."""
    reason = hopper_only(cu)
    if reason is not None:
        raise ValueError(reason)
    return '#include "shim.h"\n' + host_text(cu.read_text())


def write_host_headers(csrc: Path, out_dir: Path) -> None:
    """csrc's headers, rewritten, into ``out_dir`` (put it before csrc on the include path): fused_gemm.cuh's
    kernels and launch need the same rewrite as a .cu file's. Also conv_sm90_checks.inc (``conv_sm90_checks``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for header in [*csrc.glob("*.cuh"), *csrc.glob("*.h")]:
        if hopper_only(header) is None:  # CUTLASS's headers (sm90_kernel.cuh, ...) are never compiled for the host
            (out_dir / header.name).write_text(host_text(header.read_text()))
    (out_dir / "conv_sm90_checks.inc").write_text(conv_sm90_checks(csrc / "conv_sm90_common.cuh"))


def conv_sm90_checks(header: Path) -> str:
    """The CUTLASS-free checks of conv_sm90_common.cuh (alignment, settled strides, TMA im2col limits), as the text
    between its two seams; raises if a seam moved or CuTe/CUTLASS code crept in between."""
    text = header.read_text()
    begin, end = CONV_SM90_CHECKS
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"host_source: {header.name} lost its seams {CONV_SM90_CHECKS!r}; update CONV_SM90_CHECKS")
    part = text[text.index(begin) + len(begin) : text.index(end)]
    if "cute::" in part or "cutlass::" in part:
        raise ValueError(f"host_source: {header.name}'s checks before {end!r} now use CuTe/CUTLASS")
    return part
