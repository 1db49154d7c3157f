"""Benchmark records: the environment block, one row per case, written as JSON and a Markdown table."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

from deepfuse.bench import plots

# Measured ceilings (../shared/PERFORMANCE.md, measured on the lent H200): dense bf16/fp16 matmul through
# cuBLAS at 8192^3 and device-to-device copy bandwidth. Other GPUs: no measured ceiling, no % column.
CEILINGS = {"H200": {"tflops": 790.0, "gbps": 4300.0}}

ROW_FIELDS = ("op", "shape", "mode", "provider", "dtype", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps",
              "pct_of_peak", "peak_mem_mb")  # fmt: skip


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict:
    env = {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            env["driver"] = None
    return env


def ceiling_for(gpu_name: str | None) -> dict | None:
    for key, ceiling in CEILINGS.items():
        if gpu_name and key in gpu_name:
            return ceiling
    return None


def gpu_folder(env: dict) -> str:
    if not env.get("gpu"):
        return "cpu"
    name = env["gpu"].lower()
    for key in ("h200", "h100", "a100"):
        if key in name:
            return key
    return name.replace(" ", "_")


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| op | shape | mode | dtype | provider | median ms | p20–p80 ms | TFLOP/s | GB/s | % peak | speedup vs torch |"
    )
    lines = [header, "|" + "---|" * 11]
    baseline = {(r["op"], r["shape"], r["mode"], r["dtype"]): r["median_ms"] for r in rows if r["provider"] == "torch"}
    for r in rows:
        base = baseline.get((r["op"], r["shape"], r["mode"], r["dtype"]))
        speedup = f"{base / r['median_ms']:.2f}×" if base and r["median_ms"] else "–"
        pct = f"{r['pct_of_peak']:.0f}" if r["pct_of_peak"] is not None else "–"
        cells = [
            r["op"],
            r["shape"],
            r["mode"],
            r["dtype"],
            r["provider"],
            f"{r['median_ms']:.4f}",
            f"{r['p20_ms']:.4f}–{r['p80_ms']:.4f}",
            f"{r['tflops']:.1f}",
            f"{r['gbps']:.0f}",
            pct,
            speedup,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_plots(rows: list[dict], env: dict, folder: Path, stem: str) -> list[Path]:
    """The speedup and roofline PNGs beside a results file (none without matplotlib, and it says so)."""
    if not rows:
        return []
    points = [{"label": f"{r['provider']} {r['mode']} {r['shape']}", "tflops": r["tflops"], "gbps": r["gbps"]}
              for r in rows]  # fmt: skip
    written = [
        plots.speedup_chart(rows, folder / f"{stem}-speedup.png"),
        plots.roofline_chart(points, folder / f"{stem}-roofline.png", ceiling_for(env.get("gpu")), stem),
    ]
    if None in written:
        print("matplotlib is not installed: no plots (pip install deepfuse[plots])")
    return [path for path in written if path is not None]


def write_results(rows: list[dict], env: dict, out_dir: str | Path, name: str) -> Path:
    """Writes <out_dir>/<gpu>/<date>-<sha>-<name>.json, .md and the plots; returns the JSON path."""
    folder = Path(out_dir) / gpu_folder(env)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{env['timestamp'][:10]}-{env['git_sha']}-{name}"
    json_path = folder / f"{stem}.json"
    json_path.write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    (folder / f"{stem}.md").write_text(f"# {name} — {env.get('gpu') or 'CPU'}\n\n"
                                       f"```\n{json.dumps(env, indent=1)}\n```\n\n{markdown_table(rows)}")  # fmt: skip
    write_plots(rows, env, folder, stem)
    return json_path
