"""The compile gate: record every kernel launch the public ops make on a (pretend) H200, compile the launches
for sm_90 with Triton's compiler and ptxas, check each against the H200's limits, and print the table.

Checks, per compiled launch:
- it compiles (Triton front end, LLVM, ptxas);
- shared memory (Triton's dynamic + ptxas' static) <= 232,448 B, the opt-in limit of one block: a config
  that cannot fit must be pruned before the autotuner sees it (``early_config_prune``), since a launch
  over the limit fails with OutOfResources;
- it spills at most SPILL_BUDGET bytes, autotuned or not: a config the autotuner may pick (timing noise, or every
  candidate of a shape spilling) must be pruned before it sees it (``early_config_prune``), and pruning it also
  saves every user its compile time;
- its SASS shows the instructions its design promises (promised_markers: HGMMA for wgmma, UTMALDG for TMA
  loads, USETMAXREG where warp-specialised), and ptxas printed no "Potential Performance Loss" line (e.g. wgmma
  serialised), autotuned or not;
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

from .compile import MARKERS, MAX_REGISTERS, MAX_SHARED_BYTES, Compiled, ResultCache, compile_launch
from .device import Launch, Recorder

# Bytes of spill stores per thread allowed in any compiled launch. The most a kernel without autotune alternatives
# (attention, LSTM) spilled in the full run (--full, Triton 3.6): 136 B (TF32 attention dK/dV at D = 256).
SPILL_BUDGET = 256


# ---------------------------------------------------------------------------------------------
# What a launch is: dtype class, tile config, specialisation class
# ---------------------------------------------------------------------------------------------


def _is_tile(name: str) -> bool:
    return name.startswith(("BLOCK_", "GROUP_")) or name in ("HIDDEN", "SINGLE_SLICE", "PERSISTENT", "WARP_SPECIALIZE")


def dtype_class(launch: Launch) -> str:
    """fp16 / bf16 / fp32 (IEEE dots) / tf32: the data type and the dot precision."""
    pointers = [
        t
        for name, t in launch.signature.items()
        if t.startswith("*")
        and "lengths" not in name
        and "counters" not in name
        and "cu_" not in name
        and "mask" not in name
    ]
    descriptors = [
        t.removeprefix("tensordesc<").split("[")[0] for t in launch.signature.values() if t.startswith("tensordesc<")
    ]
    types = {"*fp16": "fp16", "*bf16": "bf16", "fp16": "fp16", "bf16": "bf16"}
    name = next((types[t] for t in descriptors + pointers if t in types), "fp32")
    if name == "fp32" and launch.constexpr_values().get("DOT_PRECISION") == "tf32":
        return "tf32"
    return name


def tile_config(launch: Launch) -> str:
    """The tile meta-parameters (autotune config or the launcher's choice), warps and stages."""
    values = launch.constexpr_values()
    tiles = [
        f"{k.removeprefix('BLOCK_')}{int(v) if not isinstance(v, bool) else v}"
        for k, v in values.items()
        if _is_tile(k)
    ]
    return " ".join(tiles + [f"w{launch.options['num_warps']}", f"s{launch.options['num_stages']}"])


def spec_class(launch: Launch) -> tuple:
    """Everything else that changes the compiled code, whatever the dtype: other constexprs (activation, masks,
    ints equal to 1), argument types and Triton's divisibility marks."""
    values = launch.constexpr_values()
    rest = tuple((k, v) for k, v in values.items() if not _is_tile(k) and k != "DOT_PRECISION")
    floats = {"*fp16": "*float", "*bf16": "*float", "*fp32": "*float"}
    # a descriptor's type holds its block shape (the tile config) and dtype: neither is a specialisation
    signature = tuple(
        (k, "tensordesc" if t.startswith("tensordesc<") else floats.get(t, t)) for k, t in launch.signature.items()
    )
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
    """What compiling this launch checks: its tile config in its dtype family, and its (dtype, specialisation)
    pair."""
    dtype = dtype_class(launch)
    return {
        (launch.kernel, _resource_family(dtype), "config", tile_config(launch)),
        (launch.kernel, "pair", dtype, spec_class(launch)),
    }


def select(launches: list[Launch], full: bool, autotuned: set[str] = frozenset()) -> list[Launch]:
    """The launches to compile. full: all of them. Otherwise every distinct launch of the kernels without an
    autotune alternative (the launcher's choice is the one that runs), and for the autotuned ones a cover: every
    (dtype, specialisation) pair and every tile config in every dtype family (fp16/bf16, fp32 with IEEE dots,
    TF32), each config first at its most demanding launch."""
    if full:
        return list(launches)
    fixed = [launch for launch in launches if launch.kernel not in autotuned]
    ordered = sorted((launch for launch in launches if launch.kernel in autotuned), key=_priority)
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
    return sorted(fixed + chosen, key=lambda launch: (launch.kernel, dtype_class(launch), tile_config(launch)))


def promised_markers(launch: Launch) -> tuple[str, ...]:
    """The SASS instructions a launch's design promises on sm_90. A launch that loads by TMA (a ``*_tma_kernel``, or
    any launch with a tensor-descriptor argument, e.g. conv2d_act's weight): TMA loads (UTMALDG); fed to wgmma
    (HGMMA) for 16-bit and TF32 dots of 64+ rows (BLOCK_M; 32-row tiles lower to mma.sync); setmaxnreg (USETMAXREG)
    when warp-specialised. The other kernels promise no particular path (their table row shows what they use)."""
    loads_by_tma = launch.kernel.endswith("_tma_kernel") or any(
        str(t).startswith("tensordesc") for t in launch.signature.values()
    )
    if not loads_by_tma:
        return ()
    values = launch.constexpr_values()
    wgmma = dtype_class(launch) != "fp32" and int(values.get("BLOCK_M", 64)) >= 64
    promised = ("HGMMA", "UTMALDG") if wgmma else ("UTMALDG",)
    if values.get("WARP_SPECIALIZE"):
        promised += ("USETMAXREG",)
    return promised


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
    missing = [marker for marker in (promised_markers(launch) if launch else ()) if not result.markers.get(marker)]
    if missing:
        problems.append(f"SASS lacks {', '.join(missing)} (the design promises {', '.join(promised_markers(launch))})")
    where = "prune this config before the autotuner sees it" if autotuned else "choose smaller tiles"
    if result.performance_loss:
        problems.append(f"ptxas: {result.performance_loss} ({where})")
    if result.shared > MAX_SHARED_BYTES:
        problems.append(f"shared memory {result.shared:,} B > {MAX_SHARED_BYTES:,} B per block ({where})")
    if result.registers > MAX_REGISTERS:
        problems.append(f"{result.registers} registers > {MAX_REGISTERS}")
    if result.spill_stores > SPILL_BUDGET:
        problems.append(f"spills {result.spill_stores:,} B > budget {SPILL_BUDGET} B ({where})")
    return problems


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _marker_names(markers: dict) -> str:
    return " ".join(marker for marker in MARKERS if markers.get(marker)) or "-"


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'kernel':<32} {'dtype':<5} {'config':<40} {'shared B':>9} {'regs':>4} {'spill B':>7} {'s':>5}  "
        f"{'SASS markers':<30} status"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        r = row.result
        status = "ok" if not row.problems else "FAIL: " + row.problems[0].splitlines()[0][:150]
        if not row.problems and r.spill_stores:
            status = "ok (spills within budget)"
        seconds = "cache" if r.cached else f"{r.seconds:.1f}"
        lines.append(
            f"{_short(row.launch.kernel):<32} {dtype_class(row.launch):<5} {tile_config(row.launch):<40} "
            f"{r.shared:>9,} {r.registers:>4} {r.spill_stores:>7,} {seconds:>5}  "
            f"{_marker_names(r.markers):<30} {status}"
        )
    return "\n".join(lines)


def format_markers(rows: list[Row]) -> str:
    """Kernel -> SASS markers, per dtype: what the design promises, what every compiled launch shows, and what
    only some show (e.g. HGMMA only at tiles of 64+ rows, USETMAXREG only in warp-specialised configs)."""
    seen = defaultdict(list)
    for row in rows:
        if not row.result.error:
            seen[(_short(row.launch.kernel), dtype_class(row.launch))].append(row)
    header = f"{'kernel':<32} {'dtype':<5} {'n':>3}  {'promised':<26} {'in every launch':<30} in some"
    lines = ["", "SASS markers on sm_90 (nvdisasm of each compiled cubin)", header, "-" * len(header)]
    for (kernel, dtype), group in sorted(seen.items()):
        promised = sorted({m for row in group for m in promised_markers(row.launch)}, key=MARKERS.index)
        every = {m: 1 for m in MARKERS if all(row.result.markers.get(m) for row in group)}
        some = {m: 1 for m in MARKERS if any(row.result.markers.get(m) for row in group) and m not in every}
        lines.append(
            f"{kernel:<32} {dtype:<5} {len(group):>3}  {' '.join(promised) or '-':<26} "
            f"{_marker_names(every):<30} {_marker_names(some)}"
        )
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


def compile_all(launches: list[Launch], jobs: int, cache: ResultCache | None = None) -> list[Compiled]:
    """Every launch's result: from the cache when it holds one, else compiled and stored as soon as it is done (an
    interrupted run keeps what it compiled)."""
    results = [cache.get(launch) if cache else None for launch in launches]
    todo = [index for index, result in enumerate(results) if result is None]
    for index, result in zip(todo, _compile([launches[i] for i in todo], jobs), strict=True):
        results[index] = result
        if cache:
            cache.put(launches[index], result)
    return results


def _compile(launches: list[Launch], jobs: int):
    """Compiled results in order, yielded one by one."""
    if jobs <= 1 or len(launches) <= 1:
        yield from map(compile_launch, launches)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    global _POOL_LAUNCHES
    _POOL_LAUNCHES = launches  # inherited by the forked workers
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(_compile_index, range(len(launches)), chunksize=1)


_POOL_LAUNCHES: list[Launch] = []


def _compile_index(index: int) -> Compiled:
    return compile_launch(_POOL_LAUNCHES[index])


COVER = (
    "compiled: every distinct launch of the kernels without an autotune alternative; for the autotuned ones "
    "every (kernel, dtype, specialisation) pair and every tile config in fp16/bf16, fp32 and TF32 (at its most "
    "demanding launch); --full compiles every distinct launch"
)


def summarise(
    rows: list[Row],
    recorder: Recorder,
    selected: int,
    case_errors: list[str],
    missing: list[str],
    seconds: float,
    full: bool = False,
) -> str:
    per_kernel = defaultdict(lambda: [0, 0])
    for row in rows:
        per_kernel[_short(row.launch.kernel)][0] += 1
        per_kernel[_short(row.launch.kernel)][1] += bool(row.problems)
    failed = sum(bool(row.problems) for row in rows)
    most_spilled = max((r.result.spill_stores for r in rows), default=0)
    lines = [
        "",
        "compiled: every distinct launch (--full)" if full else COVER,
        f"launches made by the cases: {recorder.calls:,}; distinct (kernel, specialisation, config): "
        f"{len(recorder.launches):,}; compiled: {selected:,}",
        f"compiled clean: {len(rows) - failed:,}; failed: {failed:,}; with spills: "
        f"{sum(r.result.spill_stores > 0 for r in rows):,} (most {most_spilled:,} B, "
        f"budget {SPILL_BUDGET} B); with a ptxas performance-loss line: "
        f"{sum(bool(r.result.performance_loss) for r in rows):,}; case errors: {len(case_errors)}; "
        f"unreached kernels: {len(missing)}; from the compile cache: {sum(r.result.cached for r in rows):,}; "
        f"wall time {seconds:.0f} s",
        "per kernel (compiled / failed): "
        + ", ".join(f"{name} {n}/{bad}" for name, (n, bad) in sorted(per_kernel.items())),
    ]
    return "\n".join(lines)


def run(
    jobs: int = 1, full: bool = False, only: str | None = None, verbose: bool = False, cache: ResultCache | None = None
) -> int:
    """The whole gate; returns the number of failures (0: green). cache: earlier runs' results (see ResultCache)."""
    start = time.perf_counter()
    from . import device

    recorder = device.install()
    from .cases import CASES, DTYPES, tf32

    case_errors = record(recorder, CASES, DTYPES, tf32, only)
    functions, autotuned = kernel_functions()
    launches = list(recorder.launches.values())
    missing = [] if only else unreached(functions, {launch.kernel for launch in launches})
    selected = select(launches, full, autotuned)
    print(
        f"compile gate: {recorder.calls:,} launches, {len(launches):,} distinct, compiling {len(selected):,} "
        f"for sm_90 with {jobs} job(s)" + (f", cache {cache.directory}" if cache else ""),
        flush=True,
    )
    results = compile_all(selected, jobs, cache)
    rows = []
    for launch, result in zip(selected, results, strict=True):
        tuned = launch.kernel in autotuned
        rows.append(Row(launch, result, tuned, check(launch, result, tuned)))
    print(format_table(rows))
    print(format_markers(rows))
    failures = [row for row in rows if row.problems]
    for row in failures:
        print(f"\nFAIL {row.launch.kernel} [{dtype_class(row.launch)}; {tile_config(row.launch)}]")
        print(f"  from: {', '.join(row.launch.cases[:4])}{' ...' if len(row.launch.cases) > 4 else ''}")
        for problem in row.problems:
            print("  " + problem.replace("\n", "\n  ") if verbose else "  " + problem[-600:].replace("\n", "\n  "))
    for error in case_errors:
        print(f"\nFAIL case {error}")
    for name in missing:
        print(
            f"\nFAIL {name}: no case launches or reaches this @triton.jit function (add a case in "
            f"tests/compile_gate/cases.py)"
        )
    print(summarise(rows, recorder, len(selected), case_errors, missing, time.perf_counter() - start, full))
    return len(failures) + len(case_errors) + len(missing)
