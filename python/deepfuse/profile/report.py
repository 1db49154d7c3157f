"""deepfuse.profile: run any callable under torch.profiler and report where the time went.

Per labelled deepfuse op (and the other top kernels): calls, total and mean time, % of the step,
achieved TFLOP/s and GB/s, % of the roofline and whether it is compute-, memory- or launch-bound;
plus a Chrome trace and a roofline PNG. On a CPU the times are CPU times: not GPU performance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from deepfuse.profile.labels import parse_label
from deepfuse.profile.roofline import ceiling_for, roofline_chart

STEP_LABEL = "deepfuse.profile.step"
# Below this mean duration a GPU kernel is dominated by launch cost rather than math or memory.
LAUNCH_BOUND_US = 10.0


@dataclass
class ProfileReport:
    step_ms: float
    rows: list[dict] = field(default_factory=list)
    device: str = "cpu"
    trace: Path | None = None

    def table(self) -> str:
        header = (
            "| kernel | calls | total ms | mean ms | % of step | TFLOP/s | GB/s | % of roofline | bound |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        lines = [header]
        for r in self.rows:
            fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
            lines.append(
                f"| {r['name']} | {r['calls']} | {r['total_ms']:.4f} | {r['mean_ms']:.4f} "
                f"| {r['pct_of_step']:.1f} | {fmt(r['tflops'], '.2f')} | {fmt(r['gbps'], '.1f')} "
                f"| {fmt(r['pct_of_roofline'], '.1f')} | {r['bound']} |"
            )
        note = "" if self.device == "cuda" else "\nCPU run: times are CPU times, not GPU performance.\n"
        return f"step: {self.step_ms:.4f} ms on {self.device}\n\n" + "\n".join(lines) + "\n" + note

    def __str__(self) -> str:
        return self.table()


def _bound(label: dict | None, mean_us: float, ceiling: dict | None, on_gpu: bool) -> tuple[str, float | None]:
    if on_gpu and mean_us < LAUNCH_BOUND_US:
        return "launch", None
    if label is None or ceiling is None or label["bytes"] == 0:
        return "n/a (no measured ceiling)" if label else "–", None
    intensity = label["flops"] / label["bytes"]
    ridge = ceiling["tflops"] * 1e12 / (ceiling["gbps"] * 1e9)
    attainable_tflops = min(ceiling["tflops"], intensity * ceiling["gbps"] / 1e3)
    achieved_tflops = label["flops"] / (mean_us * 1e-6) / 1e12
    return ("compute" if intensity >= ridge else "memory"), 100 * achieved_tflops / attainable_tflops


def profile(
    fn,
    *args,
    steps: int = 5,
    warmup: int = 2,
    trace: str | Path | None = None,
    out_dir: str | Path | None = None,
    top: int = 15,
    **kwargs,
) -> ProfileReport:
    """Profiles ``fn(*args, **kwargs)`` (a model's training step, say) over ``steps`` calls after ``warmup``."""
    on_gpu = torch.cuda.is_available()
    for _ in range(warmup):
        fn(*args, **kwargs)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if on_gpu:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            with torch.profiler.record_function(STEP_LABEL):
                fn(*args, **kwargs)
        if on_gpu:
            torch.cuda.synchronize()
    events = prof.key_averages()
    time_of = (lambda e: e.device_time_total) if on_gpu else (lambda e: e.cpu_time_total)  # microseconds
    step_events = [e for e in events if e.key == STEP_LABEL]
    step_us = step_events[0].cpu_time_total / steps if step_events else 0.0
    if on_gpu:  # the step's GPU time: every kernel that ran
        step_us = sum(e.device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / steps
    ceiling = ceiling_for(torch.cuda.get_device_name() if on_gpu else None)

    rows = []
    labelled = [e for e in events if parse_label(e.key)]
    others = sorted(
        (
            e
            for e in events
            if e.key != STEP_LABEL
            and not parse_label(e.key)
            and time_of(e) > 0
            and (not on_gpu or e.device_type == torch.autograd.DeviceType.CUDA)
        ),
        key=time_of,
        reverse=True,
    )[:top]
    for event in labelled + others:
        label = parse_label(event.key)
        total_us = time_of(event)
        mean_us = total_us / max(event.count, 1)
        bound, pct_roofline = _bound(label, mean_us, ceiling, on_gpu)
        seconds = mean_us * 1e-6
        rows.append(
            {
                "name": event.key,
                "calls": event.count,
                "total_ms": total_us / 1e3,
                "mean_ms": mean_us / 1e3,
                "pct_of_step": 100 * total_us / steps / step_us if step_us else 0.0,
                "tflops": label["flops"] / seconds / 1e12 if label and seconds else None,
                "gbps": label["bytes"] / seconds / 1e9 if label and seconds else None,
                "pct_of_roofline": pct_roofline,
                "bound": bound,
            }
        )
    report = ProfileReport(step_us / 1e3, rows, "cuda" if on_gpu else "cpu")
    if trace is not None:
        prof.export_chrome_trace(str(trace))
        report.trace = Path(trace)
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "profile.md").write_text(report.table())
        points = [
            {"label": r["name"].split(" ")[0], "tflops": r["tflops"], "gbps": r["gbps"]} for r in rows if r["tflops"]
        ]
        roofline_chart(points, folder / "profile-roofline.png", ceiling, "deepfuse ops")
    return report
