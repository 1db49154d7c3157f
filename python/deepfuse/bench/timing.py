"""Timing one callable: median and spread after warm-up, on the GPU with the L2 cache flushed between runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def measure(fn: Callable[[], object], device: torch.device, *, warmup_ms: float = 25, rep_ms: float = 100) -> dict:
    """{"median_ms", "p20_ms", "p80_ms"} of ``fn()``.

    CUDA: triton.testing.do_bench (CUDA events, L2 flushed before each run). CPU: wall clock, for smoke runs
    only — CPU numbers say nothing about GPU performance.
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
    fn()  # warm-up
    samples = []
    deadline = time.perf_counter() + rep_ms / 1000
    while len(samples) < 3 or (time.perf_counter() < deadline and len(samples) < 100):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    quantiles = statistics.quantiles(samples, n=10)
    return {"median_ms": statistics.median(samples), "p20_ms": quantiles[1], "p80_ms": quantiles[7]}


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20
