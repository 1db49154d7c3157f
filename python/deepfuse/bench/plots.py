"""Plots regenerated from result rows: speedup over eager torch by shape (the roofline: deepfuse.profile.roofline).

matplotlib is optional (``pip install deepfuse[plots]``); without it the caller is told and no PNG is written.
"""

from __future__ import annotations

from pathlib import Path

from deepfuse.profile.roofline import pyplot


def speedup_chart(rows: list[dict], path: str | Path, baseline: str = "torch") -> Path | None:
    """Bars: baseline median / provider median, per shape, one panel per mode."""
    plt = pyplot()
    if plt is None:
        return None
    modes = sorted({r["mode"] for r in rows})
    providers = [p for p in dict.fromkeys(r["provider"] for r in rows) if p != baseline]
    fig, axes = plt.subplots(len(modes), 1, figsize=(10, 3.5 * len(modes)), squeeze=False)
    for ax, mode in zip(axes[:, 0], modes, strict=True):
        mode_rows = [r for r in rows if r["mode"] == mode]
        shapes = list(dict.fromkeys(r["shape"] for r in mode_rows))
        base = {r["shape"]: r["median_ms"] for r in mode_rows if r["provider"] == baseline}
        width = 0.8 / max(len(providers), 1)
        for i, provider in enumerate(providers):
            times = {r["shape"]: r["median_ms"] for r in mode_rows if r["provider"] == provider}
            values = [base[s] / times[s] if s in times and s in base else 0.0 for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], values, width, label=provider)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([j + width * (len(providers) - 1) / 2 for j in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"speedup vs {baseline}")
        ax.set_title(f"{rows[0]['op']} — {mode}")
        if providers:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
