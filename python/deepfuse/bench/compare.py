"""Comparing a results file with a previous one: IMPROVED / REGRESSED / SAME per row, noise-aware.

A row changed only when the medians differ by more than ``threshold`` (relative) *and* the two runs'
p20-p80 spreads do not overlap, so run-to-run noise is not reported as a change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KEY_FIELDS = ("op", "shape", "mode", "provider", "dtype")


@dataclass
class RowChange:
    key: tuple
    status: str  # IMPROVED, REGRESSED, SAME, NEW, GONE
    previous_ms: float | None
    current_ms: float | None

    def __str__(self) -> str:
        name = " ".join(str(part) for part in self.key)
        if self.previous_ms is None or self.current_ms is None:
            return f"{self.status:<9} {name}"
        ratio = self.previous_ms / self.current_ms
        return f"{self.status:<9} {name}: {self.previous_ms:.4f} -> {self.current_ms:.4f} ms ({ratio:.2f}x)"


def load_rows(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())["rows"]


def compare_rows(current: list[dict], previous: list[dict], threshold: float = 0.05) -> list[RowChange]:
    before = {tuple(r[f] for f in KEY_FIELDS): r for r in previous}
    now = {tuple(r[f] for f in KEY_FIELDS): r for r in current}
    changes = []
    for key, row in now.items():
        old = before.get(key)
        if old is None:
            changes.append(RowChange(key, "NEW", None, row["median_ms"]))
            continue
        slower = row["median_ms"] > old["median_ms"] * (1 + threshold) and row["p20_ms"] > old["p80_ms"]
        faster = row["median_ms"] < old["median_ms"] / (1 + threshold) and row["p80_ms"] < old["p20_ms"]
        status = "REGRESSED" if slower else "IMPROVED" if faster else "SAME"
        changes.append(RowChange(key, status, old["median_ms"], row["median_ms"]))
    changes += [RowChange(key, "GONE", old["median_ms"], None) for key, old in before.items() if key not in now]
    return changes
