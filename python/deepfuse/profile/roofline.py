"""The roofline: the measured ceilings of a GPU and the chart of achieved TFLOP/s against arithmetic intensity.

Shared by the profiler (deepfuse.profile) and the benchmark harness (deepfuse.bench). matplotlib is optional
(``pip install deepfuse[plots]``); without it no PNG is written and the caller says so.
"""

from __future__ import annotations

from pathlib import Path

# Measured ceilings (../shared/PERFORMANCE.md, measured on the lent H200): dense bf16/fp16 matmul through
# cuBLAS at 8192^3 and device-to-device copy bandwidth. Other GPUs: no measured ceiling, no % column.
CEILINGS = {"H200": {"tflops": 790.0, "gbps": 4300.0}}


def ceiling_for(gpu_name: str | None) -> dict | None:
    for key, ceiling in CEILINGS.items():
        if gpu_name and key in gpu_name:
            return ceiling
    return None


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def roofline_chart(points: list[dict], path: str | Path, ceiling: dict | None, title: str) -> Path | None:
    """Arithmetic intensity (FLOP/byte) vs achieved TFLOP/s, one point per kernel or row, with the
    measured compute and bandwidth ceilings when known. Each point: {"label", "tflops", "gbps"}."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for point in points:
        if point["gbps"] <= 0 or point["tflops"] <= 0:
            continue
        intensity = point["tflops"] * 1e3 / point["gbps"]
        ax.scatter(intensity, point["tflops"], s=18)
        ax.annotate(point["label"], (intensity, point["tflops"]), fontsize=6)
    if ceiling:
        xs = [2**i for i in range(-4, 14)]
        ax.plot(
            xs,
            [min(ceiling["tflops"], x * ceiling["gbps"] / 1e3) for x in xs],
            color="black",
            linewidth=1,
            label=f"ceiling: {ceiling['tflops']:.0f} TFLOP/s, {ceiling['gbps']:.0f} GB/s",
        )
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / minimum byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
