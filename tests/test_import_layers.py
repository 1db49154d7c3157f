"""The import-layer contract: imports run one way, down the house.

    library      deepfuse._C, kernels, backend, profile, provenance  <  ops  <  nn  <  patch  <  the package root
    training     the engine and the Task contract
    data, envs   loaders and the driving simulator (the simulator imports neither the engine nor the models)
    models       the example models
    tools        cli, drive_cli, demo, bench

A module may import its own layer and the layers below it, never one above. Every ``import`` and
``from ... import`` of a deepfuse module counts, function-local ones included (a local import hides an arrow, it
does not remove it). Function-local imports are kept for two reasons only: an optional dependency (the module
imported needs a package deepfuse does not require) and the command line's start-up time (cli modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS = [  # lowest first
    {"deepfuse._C", "deepfuse.kernels", "deepfuse.backend", "deepfuse.profile", "deepfuse.provenance"},
    {"deepfuse.ops"},
    {"deepfuse.nn"},
    {"deepfuse.patch"},
    {"deepfuse"},  # the package root re-exports the library
    {"deepfuse.training"},
    {"deepfuse.data", "deepfuse.envs"},
    {"deepfuse.models"},
    {"deepfuse.cli", "deepfuse.drive_cli", "deepfuse.demo", "deepfuse.bench", "deepfuse.__main__"},
]
# Same layer, still forbidden: the simulator runs without the engine and the models.
FORBIDDEN = {"deepfuse.envs": ("deepfuse.training", "deepfuse.models")}

# deepfuse modules whose import needs a package deepfuse does not require (triton, the built _C, numba and
# gymnasium, tokenizers: pyproject's extras).
OPTIONAL_DEEPFUSE = ("deepfuse._C", "deepfuse.kernels", "deepfuse.envs", "deepfuse.data.text", "deepfuse.data.imdb")
CLI_MODULES = ("deepfuse.cli", "deepfuse.drive_cli")
# Local imports in files the lead engineer was editing when this test was written (issue 20): to hoist there.
NOT_YET: set[tuple[str, str]] = set()


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{module name: file} of the package in the checkout ``root`` (tools/code_stats.py reads older trees too)."""
    package, files = root / "python" / "deepfuse", {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (root / "kernels").glob("*.py"):
        files["deepfuse.kernels" + ("" if path.stem == "__init__" else "." + path.stem)] = path
    return files


FILES = module_files()
KNOWN = set(FILES) | {"deepfuse._C"}


def _layer(module: str) -> int:
    for rank in range(len(LAYERS) - 1, -1, -1):
        for prefix in LAYERS[rank]:
            if module == prefix or (prefix != "deepfuse" and module.startswith(prefix + ".")):
                return rank
    raise AssertionError(f"{module} is in no layer of the contract: add it to LAYERS")


def _imports(module: str, path: Path, known: set[str] = KNOWN):
    """(imported deepfuse module, line, is function-local) for every import of a deepfuse module in ``path``."""
    tree = ast.parse(path.read_text())
    local = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if isinstance(n, ast.Import | ast.ImportFrom)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "deepfuse" or target.startswith("deepfuse."):
                yield target, node.lineno, id(node) in local


def upward_imports(root: Path = ROOT) -> list[str]:
    """``file:line: module imports target`` for every import in the checkout ``root`` that breaks the contract."""
    files = FILES if root == ROOT else module_files(root)
    known, wrong = set(files) | {"deepfuse._C"}, []
    for module, path in sorted(files.items()):
        for target, line, _ in _imports(module, path, known):
            forbidden = FORBIDDEN.get(".".join(module.split(".")[:2]), ())
            if _layer(target) > _layer(module) or target.startswith(forbidden):
                wrong.append(f"{path.relative_to(root)}:{line}: {module} imports {target}")
    return wrong


def test_every_module_is_in_a_layer():
    for module in FILES:
        _layer(module)


def test_imports_run_down_the_layers():
    wrong = upward_imports()
    assert not wrong, "imports that run back up:\n" + "\n".join(wrong)


def test_the_contract_sees_an_upward_import(tmp_path):
    """The checker itself: an engine module importing a model, or the simulator importing the engine, is caught."""
    assert _layer("deepfuse.models.digits") > _layer("deepfuse.training.engine")
    assert _layer("deepfuse.ops.linear_act") < _layer("deepfuse")
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from deepfuse.models import digits\n    from deepfuse import nn, use_backend\n")
    found = list(_imports("deepfuse.training.probe", path))
    assert ("deepfuse.models.digits", 2, True) in found and ("deepfuse.nn", 3, True) in found
    assert ("deepfuse", 3, True) in found


@pytest.mark.parametrize("module", sorted(FILES))
def test_function_local_imports_have_a_reason(module):
    """A deepfuse import inside a function: an optional dependency, or the command line's start-up time."""
    for target, line, is_local in _imports(module, FILES[module]):
        if not is_local or module in CLI_MODULES or (module, target) in NOT_YET:
            continue
        assert target.startswith(OPTIONAL_DEEPFUSE), (
            f"{FILES[module].relative_to(ROOT)}:{line}: {target} imported inside a function, but it needs no "
            "optional package: import it at the top"
        )


def test_code_stats_counts_this_checkout():
    """tools/code_stats.py (issue 20's before/after table) on this checkout: no upward import, and its AST count
    of function-local imports sees a local import in a probe."""
    from tools import code_stats  # here, not at the top: it imports this module (the contract) itself

    counts = code_stats.count(ROOT, "now", longest=3, duplicates=False)
    assert counts.upward_imports == 0 and counts.local_imports > 0 and len(counts.longest) == 3
    probe = "import os\ndef f():\n    import json\n    def g():\n        import re\n"
    assert code_stats.local_imports(ast.parse(probe)) == 2
    assert "| imports running back up the layers | 0 |" in code_stats.table([counts])
