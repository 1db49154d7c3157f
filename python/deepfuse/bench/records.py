"""Benchmark records: the environment block, one row per case, written as JSON and a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from deepfuse.bench import plots
from deepfuse.profile.roofline import ceiling_for, roofline_chart
from deepfuse.provenance import environment

__all__ = ["ROW_FIELDS", "ceiling_for", "environment", "gpu_folder", "markdown_table", "write_plots", "write_results"]

ROW_FIELDS = (
    "op",
    "shape",
    "mode",
    "provider",
    "dtype",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "tflops",
    "gbps",
    "pct_of_peak",
    "peak_mem_mb",
)


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
    points = [
        {"label": f"{r['provider']} {r['mode']} {r['shape']}", "tflops": r["tflops"], "gbps": r["gbps"]} for r in rows
    ]
    written = [
        plots.speedup_chart(rows, folder / f"{stem}-speedup.png"),
        roofline_chart(points, folder / f"{stem}-roofline.png", ceiling_for(env.get("gpu")), stem),
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
    (folder / f"{stem}.md").write_text(
        f"# {name} — {env.get('gpu') or 'CPU'}\n\n```\n{json.dumps(env, indent=1)}\n```\n\n{markdown_table(rows)}"
    )
    write_plots(rows, env, folder, stem)
    return json_path
