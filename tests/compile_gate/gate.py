"""The compile gate: record every kernel launch the public ops make on a (pretend) H200, compile the launches
for sm_90 with Triton's compiler and ptxas, check each against the H200's limits, and print the table.

Checks, per compiled launch:
- it compiles (Triton front end, LLVM, ptxas);
- shared memory (Triton's dynamic + ptxas' static) <= 232,448 B, the opt-in limit of one block: a config
  that cannot fit must be pruned before the autotuner sees it (``early_config_prune``), since a launch
  over the limit fails with OutOfResources;
- a kernel with no autotune alternative spills at most SPILL_BUDGET bytes (its tiles are the launcher's
  only choice; an autotuned kernel's spilling configs are reported and left to the autotuner);
and over the whole run: every @triton.jit function in deepfuse.kernels is launched by some case or called
by a launched kernel, so a new kernel without a case fails the gate.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import time
from collections import defaultdict
from dataclasses import dataclass, field

from .compile import MAX_REGISTERS, MAX_SHARED_BYTES, Compiled, compile_launch
from .device import Launch, Recorder

# Bytes of spill stores per thread allowed in a kernel without autotune alternatives (attention, LSTM). The most
# any of them spilled in the full run (--full, Triton 3.6): 136 B (TF32 attention dK/dV at D = 256).
SPILL_BUDGET = 256


# ---------------------------------------------------------------------------------------------
# What a launch is: dtype class, tile config, specialisation class
# ---------------------------------------------------------------------------------------------


def _is_tile(name: str) -> bool:
    return name.startswith(("BLOCK_", "GROUP_")) or name in ("HIDDEN", "SINGLE_SLICE")


def dtype_class(launch: Launch) -> str:
    """fp16 / bf16 / fp32 (IEEE dots) / tf32: the data type and the dot precision."""
    pointers = [t for name, t in launch.signature.items() if t.startswith("*") and "lengths" not in name
                and "counters" not in name and "cu_" not in name and "mask" not in name]  # fmt: skip
    types = {"*fp16": "fp16", "*bf16": "bf16"}
    name = next((types[t] for t in pointers if t in types), "fp32")
    if name == "fp32" and launch.constexpr_values().get("DOT_PRECISION") == "tf32":
        return "tf32"
    return name


def tile_config(launch: Launch) -> str:
    """The tile meta-parameters (autotune config or the launcher's choice), warps and stages."""
    values = launch.constexpr_values()
    tiles = [f"{k.removeprefix('BLOCK_')}{int(v) if not isinstance(v, bool) else v}" for k, v in values.items()
             if _is_tile(k)]  # fmt: skip
    return " ".join(tiles + [f"w{launch.options['num_warps']}", f"s{launch.options['num_stages']}"])


def spec_class(launch: Launch) -> tuple:
    """Everything else that changes the compiled code, whatever the dtype: other constexprs (activation, masks,
    ints equal to 1), argument types and Triton's divisibility marks."""
    values = launch.constexpr_values()
    rest = tuple((k, v) for k, v in values.items() if not _is_tile(k) and k != "DOT_PRECISION")
    floats = {"*fp16": "*float", "*bf16": "*float", "*fp32": "*float"}
    signature = tuple((k, floats.get(t, t)) for k, t in launch.signature.items())
    return rest, signature, tuple(sorted((k, str(v)) for k, v in launch.attrs.items()))


def _resource_family(dtype: str) -> str:
    """fp16 and bf16 take the same registers and shared memory: one family for the tile configs."""
    return "16-bit" if dtype in ("fp16", "bf16") else dtype


def _priority(launch: Launch) -> tuple:
    """Where a config is likeliest to run out of registers or shared memory, first: the largest tiles, the most
    16-divisible arguments (aligned loads are the ones Triton pipelines through shared memory), the most
    features switched on (an activation's saved input is one more operand stream in backward)."""
    values = launch.constexpr_values()
    volume = launch.options["num_stages"] * launch.options["num_warps"]
    for name, value in values.items():
        if name.startswith("BLOCK_") or name == "HIDDEN":
            volume *= int(value)
    features = sum(bool(v) for k, v in values.items() if k.isupper() and not _is_tile(k) and not isinstance(v, str))
    return -volume, -len(launch.attrs), -features, launch.kernel, launch.key


def cover_items(launch: Launch) -> set:
    dtype = dtype_class(launch)
    return {(launch.kernel, _resource_family(dtype), "config", tile_config(launch)), (launch.kernel, "dtype", dtype),
            (launch.kernel, "spec", spec_class(launch))}  # fmt: skip


def select(launches: list[Launch], full: bool) -> list[Launch]:
    """The launches to compile. full: all of them. Otherwise a cover: every kernel's tile configs in every dtype
    family (fp16/bf16, fp32 with IEEE dots, TF32), every dtype, and every specialisation class at least once
    (in some dtype), largest tiles first."""
    if full:
        return list(launches)
    ordered = sorted(launches, key=_priority)
    needs = {id(launch): cover_items(launch) for launch in ordered}
    remaining = set().union(*needs.values()) if needs else set()
    chosen = []
    by_config = defaultdict(list)
    for launch in ordered:
        by_config[next(item for item in needs[id(launch)] if item[2] == "config")].append(launch)
    for candidates in by_config.values():  # each tile config first at its most demanding launches; of those,
        demanding = [c for c in candidates if _priority(c)[:3] == _priority(candidates[0])[:3]]  # the one
        best = max(demanding, key=lambda launch: len(needs[id(launch)] & remaining))  # covering most
        chosen.append(best)
        remaining -= needs[id(best)]
    while remaining:  # then a greedy cover of the rest; ties go to the more demanding launch (the order above)
        best = max(ordered, key=lambda launch: len(needs[id(launch)] & remaining))
        chosen.append(best)
        remaining -= needs[id(best)]
    return sorted(chosen, key=lambda launch: (launch.kernel, dtype_class(launch), tile_config(launch)))


# ---------------------------------------------------------------------------------------------
# Which @triton.jit functions exist, which are autotuned, which the cases reach
# ---------------------------------------------------------------------------------------------


def kernel_functions(package: str = "deepfuse.kernels") -> tuple[dict[str, object], set[str]]:
    """({qualified name: JITFunction} for every module-level @triton.jit function, {names of autotuned ones})."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction

    root = importlib.import_module(package)
    functions, autotuned = {}, set()
    for info in pkgutil.iter_modules(root.__path__, package + "."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            wrapped, tuned = value, False
            while isinstance(wrapped, Autotuner | Heuristics):
                tuned = tuned or isinstance(wrapped, Autotuner)
                wrapped = wrapped.fn
            if isinstance(wrapped, JITFunction) and wrapped.fn.__module__ == module.__name__:
                name = f"{module.__name__}.{wrapped.fn.__name__}"
                functions[name] = wrapped
                if tuned:
                    autotuned.add(name)
    return functions, autotuned


def _callees(function) -> list:
    """The @triton.jit functions a jit function's body names (directly, or as module.attribute)."""
    from triton.runtime.jit import JITFunction

    scope = function.fn.__globals__
    found = []
    for node in ast.walk(ast.parse(function.src)):
        value = None
        if isinstance(node, ast.Name):
            value = scope.get(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            value = getattr(scope.get(node.value.id), node.attr, None)
        if isinstance(value, JITFunction):
            found.append(value)
    return found


def unreached(functions: dict[str, object], launched: set[str]) -> list[str]:
    """Jit functions that no case launches and no launched kernel calls (transitively)."""
    reached, stack = set(), [functions[name] for name in launched if name in functions]
    while stack:
        function = stack.pop()
        if id(function) in reached:
            continue
        reached.add(id(function))
        stack.extend(_callees(function))
    return sorted(name for name, function in functions.items() if id(function) not in reached)


# ---------------------------------------------------------------------------------------------
# Checks and the report
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    launch: Launch
    result: Compiled
    autotuned: bool
    problems: list[str] = field(default_factory=list)


def check(launch: Launch, result: Compiled, autotuned: bool) -> list[str]:
    """What is wrong with one compiled launch (empty: nothing)."""
    if result.error:
        return [f"does not compile: {result.error}"]
    problems = []
    if result.shared > MAX_SHARED_BYTES:
        where = "prune this config before the autotuner sees it" if autotuned else "choose smaller tiles"
        problems.append(f"shared memory {result.shared:,} B > {MAX_SHARED_BYTES:,} B per block ({where})")
    if result.registers > MAX_REGISTERS:
        problems.append(f"{result.registers} registers > {MAX_REGISTERS}")
    if not autotuned and result.spill_stores > SPILL_BUDGET:
        problems.append(f"spills {result.spill_stores:,} B > budget {SPILL_BUDGET} B (no autotune alternative)")
    return problems


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def format_table(rows: list[Row]) -> str:
    header = f"{'kernel':<28} {'dtype':<5} {'config':<34} {'shared B':>9} {'regs':>4} {'spill B':>7} {'s':>5}  status"
    lines = [header, "-" * len(header)]
    for row in rows:
        r = row.result
        status = "ok" if not row.problems else "FAIL: " + row.problems[0].splitlines()[0][:150]
        if not row.problems and r.spill_stores:
            status = "ok (spills; autotuned)" if row.autotuned else "ok (spills within budget)"
        lines.append(f"{_short(row.launch.kernel):<28} {dtype_class(row.launch):<5} {tile_config(row.launch):<34} "
                     f"{r.shared:>9,} {r.registers:>4} {r.spill_stores:>7,} {r.seconds:>5.1f}  {status}")  # fmt: skip
    return "\n".join(lines)


def record(recorder: Recorder, cases: dict, dtypes: dict, tf32_context, only: str | None = None) -> list[str]:
    """Runs every case in every dtype; returns the errors the ops raised (each one a gate failure)."""
    errors = []
    for op, op_cases in cases.items():
        for case in op_cases:
            if only and only not in f"{op} {case.name}":
                continue
            for dtype_name, (dtype, allow_tf32) in dtypes.items():
                recorder.case = f"{case.name} [{dtype_name}]"
                with tf32_context(allow_tf32):
                    try:
                        case.run(dtype)
                    except Exception as error:  # noqa: BLE001 - reported as a failure of this case
                        errors.append(f"{recorder.case}: {type(error).__name__}: {error}")
    return errors


def compile_all(launches: list[Launch], jobs: int) -> list[Compiled]:
    if jobs <= 1:
        return [compile_launch(launch) for launch in launches]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _POOL_LAUNCHES
    _POOL_LAUNCHES = launches  # inherited by the forked workers
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_index, range(len(launches)), chunksize=1))


_POOL_LAUNCHES: list[Launch] = []


def _compile_index(index: int) -> Compiled:
    return compile_launch(_POOL_LAUNCHES[index])


COVER = ("compiled: a cover (every kernel's tile configs in fp16/bf16, fp32 and TF32, each at its most demanding "
         "launch; every dtype; every specialisation class once); --full compiles every distinct launch")


def summarise(rows: list[Row], recorder: Recorder, selected: int, case_errors: list[str], missing: list[str],
              seconds: float, full: bool = False) -> str:  # fmt: skip
    per_kernel = defaultdict(lambda: [0, 0])
    for row in rows:
        per_kernel[_short(row.launch.kernel)][0] += 1
        per_kernel[_short(row.launch.kernel)][1] += bool(row.problems)
    failed = sum(bool(row.problems) for row in rows)
    lines = [
        "",
        "compiled: every distinct launch (--full)" if full else COVER,
        f"launches made by the cases: {recorder.calls:,}; distinct (kernel, specialisation, config): "
        f"{len(recorder.launches):,}; compiled: {selected:,}",
        f"compiled clean: {len(rows) - failed:,}; failed: {failed:,}; with spills: "
        f"{sum(r.result.spill_stores > 0 for r in rows):,}; case errors: {len(case_errors)}; "
        f"unreached kernels: {len(missing)}; wall time {seconds:.0f} s",
        "per kernel (compiled / failed): "
        + ", ".join(f"{name} {n}/{bad}" for name, (n, bad) in sorted(per_kernel.items())),
    ]
    return "\n".join(lines)


def run(jobs: int = 1, full: bool = False, only: str | None = None, verbose: bool = False) -> int:
    """The whole gate; returns the number of failures (0: green)."""
    start = time.perf_counter()
    from . import device

    recorder = device.install()
    from .cases import CASES, DTYPES, tf32

    case_errors = record(recorder, CASES, DTYPES, tf32, only)
    functions, autotuned = kernel_functions()
    launches = list(recorder.launches.values())
    missing = [] if only else unreached(functions, {launch.kernel for launch in launches})
    selected = select(launches, full)
    print(f"compile gate: {recorder.calls:,} launches, {len(launches):,} distinct, compiling {len(selected):,} "
          f"for sm_90 with {jobs} job(s)", flush=True)  # fmt: skip
    results = compile_all(selected, jobs)
    rows = []
    for launch, result in zip(selected, results, strict=True):
        tuned = launch.kernel in autotuned
        rows.append(Row(launch, result, tuned, check(launch, result, tuned)))
    print(format_table(rows))
    failures = [row for row in rows if row.problems]
    for row in failures:
        print(f"\nFAIL {row.launch.kernel} [{dtype_class(row.launch)}; {tile_config(row.launch)}]")
        print(f"  from: {', '.join(row.launch.cases[:4])}{' ...' if len(row.launch.cases) > 4 else ''}")
        for problem in row.problems:
            print("  " + problem.replace("\n", "\n  ") if verbose else "  " + problem[-600:].replace("\n", "\n  "))
    for error in case_errors:
        print(f"\nFAIL case {error}")
    for name in missing:
        print(f"\nFAIL {name}: no case launches or reaches this @triton.jit function (add a case in "
              f"tests/compile_gate/cases.py)")  # fmt: skip
    print(summarise(rows, recorder, len(selected), case_errors, missing, time.perf_counter() - start, full))
    return len(failures) + len(case_errors) + len(missing)
