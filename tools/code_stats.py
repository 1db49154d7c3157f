"""Structure counts of a deepfuse checkout, side by side for several checkouts (issue 20's evidence).

    python tools/code_stats.py /tmp/before OLD_LABEL . NEW_LABEL     # a Markdown table, then the longest functions

Per checkout, over the package (python/deepfuse and the Triton kernels/ that install as deepfuse.kernels):
- imports running back up the layers: the contract of tests/test_import_layers.py (this checkout's) applied to it;
- function-local imports: ``import`` statements inside a function (AST), any module;
- ``# fmt: skip`` markers, in every tracked Python file;
- pairs of places repeating six or more lines, as the ``duplicates`` command counts them over the whole tree (when
  that command is installed; otherwise "n/a");
- the longest functions (lines from ``def`` to the last line of the body).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # the layer contract lives in this checkout's tests

from tests.test_import_layers import upward_imports  # noqa: E402


@dataclass
class Counts:
    label: str
    upward_imports: int
    local_imports: int
    fmt_skips: int
    duplicate_pairs: int | None
    longest: list[tuple[int, str]] = field(default_factory=list)  # (lines, "file:line name")


def package_files(root: Path) -> list[Path]:
    return sorted((root / "python" / "deepfuse").rglob("*.py")) + sorted((root / "kernels").glob("*.py"))


def tracked_python_files(root: Path) -> list[Path]:
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "*.py"], capture_output=True, text=True, check=True)
    return [root / name for name in listed.stdout.split()]


def functions(tree: ast.AST):
    return (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))


def local_imports(tree: ast.AST) -> int:
    """Import statements inside functions (a nested function's counted once)."""
    seen = {
        id(node)
        for function in functions(tree)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    return len(seen)


def duplicate_pairs(root: Path) -> int | None:
    """The pair count of ``duplicates`` over the tree (its first line: "N pairs of places ..." or "no duplicates")."""
    command = shutil.which("duplicates")
    if command is None:
        return None
    result = subprocess.run(
        [command, "--repo", str(root), "--seconds", "300"], capture_output=True, text=True, check=False
    )
    first = result.stdout.splitlines()[0] if result.stdout else ""
    if first.startswith("no duplicates"):
        return 0
    match = re.match(r"(\d+) pairs? of places", first)
    if match is None or "incomplete:" in result.stdout:
        raise RuntimeError(f"duplicates --repo {root}: {result.stdout.strip() or result.stderr.strip()}")
    return int(match.group(1))


def count(root: Path, label: str, longest: int = 10, duplicates: bool = True) -> Counts:
    local, lengths = 0, []
    for path in package_files(root):
        tree = ast.parse(path.read_text(), str(path))
        local += local_imports(tree)
        name = path.relative_to(root)
        lengths += [(f.end_lineno - f.lineno + 1, f"{name}:{f.lineno} {f.name}") for f in functions(tree)]
    skips = sum(path.read_text().count("# fmt: skip") for path in tracked_python_files(root) if path.is_file())
    lengths.sort(key=lambda item: (-item[0], item[1]))
    pairs = duplicate_pairs(root) if duplicates else None
    return Counts(label, len(upward_imports(root)), local, skips, pairs, lengths[:longest])


def table(rows: list[Counts]) -> str:
    lines = ["| | " + " | ".join(r.label for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for title, key in (
        ("imports running back up the layers", "upward_imports"),
        ("function-local imports (package)", "local_imports"),
        ("`# fmt: skip` markers (tracked .py)", "fmt_skips"),
        ("pairs of places repeating >= 6 lines (`duplicates`)", "duplicate_pairs"),
    ):
        values = [getattr(r, key) for r in rows]
        lines.append(f"| {title} | " + " | ".join("n/a" if v is None else str(v) for v in values) + " |")
    for r in rows:
        lines.append(f"\nlongest functions, {r.label}:")
        lines += [f"  {n:4d}  {where}" for n, where in r.longest]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", metavar="ROOT LABEL", help="checkout folders, each followed by a label")
    parser.add_argument("--longest", type=int, default=10, help="how many of the longest functions to list")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give each checkout folder a label: ROOT LABEL [ROOT LABEL ...]")
    roots = [(Path(args.pairs[i]).resolve(), args.pairs[i + 1]) for i in range(0, len(args.pairs), 2)]
    for root, _ in roots:
        if not (root / "python" / "deepfuse").is_dir():
            parser.error(f"{root}: not a deepfuse checkout (no python/deepfuse)")
    print(table([count(root, label, args.longest) for root, label in roots]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
