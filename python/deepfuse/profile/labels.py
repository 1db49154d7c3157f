"""Labels on every deepfuse op for profilers: a torch.profiler range (and an NVTX range on the GPU) named
``deepfuse::<op>[<backend>] flops=<F> bytes=<B>``, from which the report computes achieved rates.

Formatting the label costs a little, so it is only built while a profiler is recording.
"""

from __future__ import annotations

import contextlib
import re

import torch

LABEL = re.compile(r"^deepfuse::(?P<op>\w+)\[(?P<backend>\w+)\] flops=(?P<flops>\d+) bytes=(?P<bytes>\d+)$")


def _profiler_enabled() -> bool:
    return torch.autograd.profiler._is_profiler_enabled


@contextlib.contextmanager
def op_range(op: str, backend: str, flops: int, min_bytes: int):
    if not _profiler_enabled():
        yield
        return
    name = f"deepfuse::{op}[{backend}] flops={int(flops)} bytes={int(min_bytes)}"
    nvtx = torch.cuda.is_available()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()


def parse_label(name: str) -> dict | None:
    match = LABEL.match(name)
    if match is None:
        return None
    return {"op": match["op"], "backend": match["backend"], "flops": int(match["flops"]), "bytes": int(match["bytes"])}
