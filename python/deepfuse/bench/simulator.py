"""Benchmark: rendered simulator steps per second on the CPU, through ``DriveVectorEnv.step`` (step, reward,
autoreset, 64x64 camera images), with uniformly random steering — so cars leave the road and reset often, as
early in training.

Rows: one per number of cars and renderer threading ("auto", "serial", "parallel"; see
``physics.render``), with the median time of one vector step, p20/p80, and ``steps_per_s`` = cars / median.
Written beside the op benchmarks: ``<out_dir>/<gpu or cpu>/<date>-<sha>-drive_env.{json,md}``. The machine's
load average is recorded with them: on a shared machine other processes take cores from the renderer.

    python -m deepfuse.bench.simulator [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numba
import numpy as np

from deepfuse.bench import records
from deepfuse.envs import physics
from deepfuse.envs.env import DriveVectorEnv

GOAL = 20_000  # rendered 64x64 steps per second on 2 cores (the goal)


def measure(num_envs: int, threads: str, image_size: int = 64, steps: int = 200, repeats: int = 5) -> dict:
    """One row: ``repeats`` runs of ``steps`` vector steps after a warm-up."""
    physics.set_render_threads(threads)
    try:
        envs = DriveVectorEnv(num_envs, tracks=8, image_size=image_size)
        envs.reset(seed=0)
        actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, num_envs, 1)).astype(np.float32)
        for t in range(min(20, steps)):
            envs.step(actions[t])
        samples, resets = [], 0
        for _ in range(repeats):
            start = time.perf_counter()
            for t in range(steps):
                _, _, terminated, truncated, _ = envs.step(actions[t])
                resets += int((terminated | truncated).sum())
            samples.append((time.perf_counter() - start) / steps * 1000)
    finally:
        physics.set_render_threads("auto")
    quantiles = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    median = statistics.median(samples)
    return {
        "op": "drive_env",
        "shape": f"{num_envs} cars {image_size}x{image_size}",
        "mode": "step",
        "provider": f"numba_{threads}",
        "dtype": "uint8",
        "median_ms": median,
        "p20_ms": quantiles[1],
        "p80_ms": quantiles[7],
        "tflops": 0.0,
        "gbps": 0.0,
        "pct_of_peak": None,
        "peak_mem_mb": None,
        "steps_per_s": num_envs / (median / 1000),
        "resets_per_step": resets / (repeats * steps * num_envs),
    }


def main(out_dir: str | Path = "benchmarks/results", quick: bool = True) -> list[dict]:
    """Measure, print a table, write the results files; returns the rows."""
    counts = (1, 16, 64) if quick else (1, 16, 64, 256)
    rows = [measure(n, threads) for n in counts for threads in ("auto", "serial", "parallel")]
    env = records.environment() | {
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "threading_layer": _threading_layer(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }
    lines = ["| cars | renderer | ms per step (p20–p80) | steps/s | resets per car-step |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['provider']} | {r['median_ms']:.3f} ({r['p20_ms']:.3f}–{r['p80_ms']:.3f}) "
            f"| {r['steps_per_s']:,.0f} | {r['resets_per_step']:.3f} |"
        )
    best = max(r["steps_per_s"] for r in rows)
    verdict = f"best {best:,.0f} rendered steps/s (goal {GOAL:,} on 2 cores; load average {env['load_average'][0]:.1f})"
    table = "\n".join(lines)
    print(f"{table}\n{verdict}")
    folder = Path(out_dir) / records.gpu_folder(env)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{env['timestamp'][:10]}-{env['git_sha']}-drive_env"
    (folder / f"{stem}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    (folder / f"{stem}.md").write_text(
        f"# drive_env — CPU\n\n```\n{json.dumps(env, indent=1)}\n```\n\n{table}\n\n{verdict}\n"
    )
    print(f"results: {folder / stem}.json")
    return rows


def _threading_layer() -> str:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return str(numba.config.THREADING_LAYER)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    arguments = parser.parse_args()
    main(arguments.out, quick=arguments.quick)
