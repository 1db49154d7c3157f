"""The CUDA C++ resource gate: every __global__ kernel of deepfuse._C, as ptxas compiled it for sm_90 (sm_90a for the
Hopper-only kernels), against the H200's limits, at the largest sizes its launchers support. No GPU needed.

- Registers, spills, static shared memory: `_C.ptxas_report()`, the build's own `ptxas -v` output (CMake option
  DEEPFUSE_PTXAS_REPORT, on by default), so nothing is compiled twice.
- Dynamic shared memory, its opt-in and the block size: `_C.launch_plan`, which runs the launchers' own host code
  (plans, dispatch, checks) with every device call recorded instead of made. The cases below call each launcher
  with fake addresses at its largest supported sizes (attention at every head-dim tile, D up to 256 in fp16/bf16 and
  128 in fp32; the LSTM's persistent path at every hidden size it can plan, the per-step path at its widest slice).

A kernel that no case launches, or a launch of a kernel ptxas did not report, fails the gate: a new kernel cannot slip
past it.

- The SASS of the built module (`cuobjdump -sass`, the triton wheel carries one): every sm_90a kernel must show the
  instructions its design promises (HGMMA: wgmma; UTMALDG: TMA loads; USETMAXREG: warp specialisation), and ptxas
  may print no "Potential Performance Loss" line (e.g. wgmma serialised for lack of registers).

`python -m tests.cuda_resources` prints both tables.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

# The H200 (sm_90), per block unless said otherwise. H200 is the device the dry runs describe (launch_plan's keywords).
H200 = dict(
    sms=132,
    smem_optin=232_448,
    smem_per_sm=233_472,
    smem_reserved_per_block=1024,
    max_threads_per_sm=2048,
    cooperative=True,
)
ARCHS = ("sm_90", "sm_90a")  # per kernel, the first of these ptxas compiled it for
MAX_DYNAMIC_SMEM_OPTIN = 232_448  # 227 KiB: cudaDevAttrMaxSharedMemoryPerBlockOptin; static + dynamic must fit
MAX_SMEM_WITHOUT_OPTIN = 48 * 1024  # beyond this, dynamic shared memory needs the kernel's opt-in
MAX_STATIC_SMEM = 48 * 1024
MAX_REGISTERS_PER_THREAD = 255
REGISTERS_PER_SM = 65_536  # a block whose threads need more cannot launch
REGISTER_GRANULE = 8  # registers are allocated per thread in multiples of 8 (256 per warp)
# Spill bytes (stores + loads) allowed per kernel label; a kernel not listed may not spill at all.
SPILL_BUDGET: dict[str, int] = {}

FAKE_ADDRESS = 1 << 20  # 16-byte aligned; a dry run dereferences nothing
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
ATTENTION_MAX_HEAD_DIM = {"float32": 128, "float16": 256, "bfloat16": 256}
# Dynamic shared memory of the persistent LSTM kernels grows with the batch's tiles kept on chip (up to 4 per block):
# a batch this large keeps all 4 in every block on 132 SMs.
LSTM_LARGE_BATCH = 1 << 17
LSTM_PERSISTENT_SCAN = range(1, 4225)  # every H a persistent plan can have: at most 132 slices of <= 32 units


@dataclass
class Kernel:
    """One kernel as ptxas reported it, and the launches the plan cases made of it."""

    label: str  # demangled, namespaces dropped
    arch: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack: int = 0
    static_smem: int = 0
    launches: list[tuple[str, dict]] = field(default_factory=list)  # (case, launch)

    def largest_launch(self) -> tuple[str, dict] | None:
        return max(self.launches, key=lambda item: (item[1]["smem"], item[1]["block"]), default=None)


# ------------------------------------------------------------------------------------------------ ptxas's report
def kernel_key(name: str) -> str:
    """'void deepfuse::(anonymous namespace)::k<__half, 256>(Params)' and 'k<__half, 256>' -> 'k<__half,256>'."""
    name = name.replace("(anonymous namespace)::", "")
    if name.startswith("void "):
        name = name[len("void ") :]
    depth = 0
    for i, char in enumerate(name):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "(" and depth == 0:
            name = name[:i]
            break
    return re.sub(r"\s+", "", re.sub(r"\b\w+::", "", name))


def demangle(names: list[str]) -> list[str]:
    if not names:
        return []
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        raise RuntimeError("c++filt (binutils) is needed to read ptxas's kernel names; install binutils")
    done = subprocess.run([cxxfilt], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    out = done.stdout.splitlines()
    assert len(out) == len(names), "c++filt returned a different number of names"
    return out


def parse_ptxas(report: str) -> tuple[dict[str, Kernel], list[str]]:
    """Kernels by kernel_key, each as compiled for the first architecture in ARCHS that the report has for it; and the
    spills of non-entry (called, not inlined) device functions, which the kernels calling them pay."""
    entries: list[tuple[str, str, dict]] = []  # mangled, arch, properties
    properties: dict[str, dict] = {}  # mangled -> stack/spills, for every function
    current = None
    target = None
    for line in report.splitlines():
        if m := re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line):
            current = {}
            entries.append((m.group(1), m.group(2), current))
        elif m := re.search(r"Function properties for (\S+)", line):
            target = properties.setdefault(m.group(1), {})
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if target is not None:
                target.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif (m := re.search(r"Used (\d+) registers", line)) and current is not None:
            current["registers"] = int(m.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            current["static_smem"] = int(smem.group(1)) if smem else 0
    chosen = {}  # mangled -> (arch, info), the earliest arch in ARCHS
    for mangled, arch, info in entries:
        if arch in ARCHS and (mangled not in chosen or ARCHS.index(arch) < ARCHS.index(chosen[mangled][0])):
            chosen[mangled] = (arch, info)
    if not chosen:
        raise ValueError(
            f"the ptxas report has no kernels for {' or '.join(ARCHS)}: build with sm_90 among "
            f"DEEPFUSE_CUDA_ARCHS (the default)"
        )
    labels = demangle(list(chosen))
    kernels = {}
    for (mangled, (arch, info)), label in zip(chosen.items(), labels, strict=True):
        if "registers" not in info:
            raise ValueError(f"ptxas reported no register count for {label}")
        kernel = Kernel(label=kernel_key(label), arch=arch, **info, **properties.get(mangled, {}))
        kernels[kernel.label] = kernel
    entry_names = {e[0] for e in entries}
    spilling = [
        name
        for name, props in properties.items()
        if name not in entry_names and (props.get("spill_stores") or props.get("spill_loads"))
    ]
    return kernels, [f"{label}: {properties[name]}" for name, label in zip(spilling, demangle(spilling), strict=True)]


# ------------------------------------------------------------------------------------------------ launch plans
def plan_cases(C, lstm_hidden_sizes=LSTM_PERSISTENT_SCAN) -> Iterator[tuple[str, Callable[[], object]]]:
    """(case, fn): fn calls one or more of C's launchers with fake addresses at the sizes named in the case.
    lstm_hidden_sizes: where the LSTM sequence launchers choose their path (all of them by default)."""
    for dtype_name, dtype in DTYPES.items():
        yield f"linear_act {dtype_name} M=N=K=1000", partial(_linear_act, C, dtype, 1000)
        yield f"conv2d_act {dtype_name} 2x64x56x56 k3 s2 g2", partial(_conv2d_act, C, dtype)
        yield f"conv2d_act {dtype_name} channels_last 8x256x56x56 k3", partial(_conv2d_act_channels_last, C, dtype)
        # Every head-dim tile up to the largest supported head dim.
        dims = {1, 32, 33, 64, 65, 128, ATTENTION_MAX_HEAD_DIM[dtype_name]} | ({129, 200} if dtype else set())
        for d in sorted(dims):
            yield f"attention {dtype_name} D={d}", partial(_attention, C, dtype, d)
        for hidden in (1, 100, 4096, 1 << 15):
            yield f"lstm_cell {dtype_name} B=1000 H={hidden}", partial(_lstm_cell, C, dtype, hidden)
        # The per-step path at its narrowest and widest slices (path 2 = per step) ...
        for hidden in (1, 100, 4096, 1 << 15):
            yield f"lstm_seq per_step {dtype_name} H={hidden}", partial(_lstm_seq, C, dtype, hidden, 2)
        # ... and the launcher's choice (path 0), persistent wherever it can plan it.
        for hidden in lstm_hidden_sizes:
            yield f"lstm_seq auto {dtype_name} H={hidden}", partial(_lstm_seq, C, dtype, hidden, 0)


def _linear_act(C, dtype: int, n: int) -> None:
    """Forward (on the H200: the sm_90a kernel in fp16/bf16), and with K = n + 1, which TMA cannot stride (the WMMA
    kernel); backward with the workspace deepfuse passes (on the H200 in fp16/bf16: dz and db stored, then the sm_90a
    dgrad and wgrad GEMMs): dx and dW (+db), db alone (frozen weight), and with K = n + 1 (the WMMA kernels); gelu."""
    a = FAKE_ADDRESS
    C.linear_act_fwd(a, n, 1, a, n, 1, a, a, a, n, n, n, dtype, 3, 0)
    C.linear_act_fwd(a, n + 1, 1, a, n + 1, 1, a, a, a, n, n, n + 1, dtype, 3, 0)
    workspace = dict(workspace=a, workspace_bytes=C.linear_act_bwd_workspace_bytes(n, n, dtype, 3, True))
    C.linear_act_bwd(a, a, a, n, 1, a, n, 1, a, a, a, n, n, n, dtype, 3, 0, **workspace)
    C.linear_act_bwd(a, a, a, n, 1, a, n, 1, 0, 0, a, n, n, n, dtype, 3, 0, **workspace)
    C.linear_act_bwd(a, a, a, n + 1, 1, a, n + 1, 1, a, a, a, n, n, n + 1, dtype, 3, 0, **workspace)


def _conv2d_act(C, dtype: int) -> None:
    """Forward, dx, dW (+db): 2x64x56x56 -> 128 channels, 3x3 stride 2 padding 1, 2 groups; gelu."""
    a = FAKE_ADDRESS
    shape = (2, 64, 56, 56, 128, 28, 28, 3, 3, 2, 2, 1, 1, 1, 1, 2)
    xs, ys, ws = (64 * 56 * 56, 56 * 56, 56, 1), (128 * 28 * 28, 28 * 28, 28, 1), (32 * 9, 9, 3, 1)
    C.conv2d_act_fwd(shape, a, xs, a, ws, a, a, ys, a, a, ys, dtype, 3, 0)
    C.conv2d_act_bwd(shape, a, a, ys, a, xs, a, ws, a, xs, a, ws, a, dtype, 3, 0)


def _conv2d_act_channels_last(C, dtype: int) -> None:
    """Forward with a residual, without and with the pre-activation, and backward with the workspace deepfuse passes:
    8x256x56x56 -> 256 channels, 3x3 padding 1, all channels_last (on the H200 in fp16/bf16: the sm_90a kernel, and
    with z wanted its activation pass; backward dz and db stored, then the sm_90a dgrad and wgrad); gelu."""
    a = FAKE_ADDRESS
    shape = (8, 256, 56, 56, 256, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1)
    nhwc, krsc = (256 * 56 * 56, 1, 56 * 256, 256), (256 * 9, 1, 3 * 256, 256)
    C.conv2d_act_fwd(shape, a, nhwc, a, krsc, a, a, nhwc, a, 0, nhwc, dtype, 3, 0)
    C.conv2d_act_fwd(shape, a, nhwc, a, krsc, a, a, nhwc, a, a, nhwc, dtype, 3, 0)
    workspace = dict(workspace=a, workspace_bytes=C.conv2d_act_bwd_workspace_bytes(shape, dtype, 3, True))
    C.conv2d_act_bwd(shape, a, a, nhwc, a, nhwc, a, krsc, a, nhwc, a, krsc, a, dtype, 3, 0, **workspace)


def _attention(C, dtype: int, d: int) -> None:
    """Forward and backward: padded (plain, and causal with key padding; GQA) and varlen."""
    a, batch, heads, n = FAKE_ADDRESS, 2, 4, 1000
    strides = (heads * n * d, n * d, d, 1)
    sizes = (batch, heads, heads // 2, n, n, d)
    for causal, mask in ((False, 0), (True, a)):
        C.attention_fwd(a, strides, a, strides, a, strides, mask, (n, 1), a, a, sizes, 0.1, causal, dtype, 0)
        C.attention_bwd(
            a, strides, a, strides, a, strides, a, strides, mask, (n, 1), a, a, a, a, a, sizes, 0.1, causal, dtype, 0
        )
    packed = (0, d, heads * d, 1)  # (T, H, D) as (1, H, T, D) strides; 3 sequences of at most n tokens
    varlen = dict(cu_seqlens_q=a, cu_seqlens_k=a, total_q=2 * n)
    sizes = (3, heads, heads, n, n, d)
    C.attention_fwd(a, packed, a, packed, a, packed, 0, (0, 0), a, a, sizes, 0.1, True, dtype, 0, **varlen)
    C.attention_bwd(
        a, packed, a, packed, a, packed, a, packed, 0, (0, 0), a, a, a, a, a, sizes, 0.1, True, dtype, 0, **varlen
    )


def _lstm_cell(C, dtype: int, hidden: int) -> None:
    """The per-step forward kernel with two operands (x W_ih^T + h W_hh^T), and the pointwise gate gradients."""
    a, h, batch = FAKE_ADDRESS, hidden, 1000
    C.lstm_cell_fwd(a, h, 1, a, h, 1, a, h, 1, a, h, 1, a, h, 1, a, a, a, a, batch, h, h, dtype, 0)
    C.lstm_cell_grad_gates(a, a, a, a, a, a, a, batch, h, dtype, 0)


def _lstm_seq(C, dtype: int, hidden: int, path: int) -> None:
    a, steps, batch = FAKE_ADDRESS, 2, LSTM_LARGE_BATCH
    C.lstm_seq_fwd(a, a, hidden, 1, a, a, a, a, a, a, a, steps, batch, hidden, dtype, path, 0)
    C.lstm_seq_bwd(a, a, a, a, a, hidden, 1, a, a, a, a, a, steps, batch, hidden, dtype, path, 0)


def too_large_cases(C) -> Iterator[tuple[str, Callable[[], object]]]:
    """Sizes past the largest supported ones, which the launchers must refuse (so the cases above are the largest)."""
    for dtype_name, dtype in DTYPES.items():
        d = ATTENTION_MAX_HEAD_DIM[dtype_name] + 1
        yield f"attention {dtype_name} D={d}", partial(_attention, C, dtype, d)


# ------------------------------------------------------------------------------------------------ the gate
def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def check(C, lstm_hidden_sizes=LSTM_PERSISTENT_SCAN) -> tuple[list[Kernel], list[str], dict]:
    """(kernels, violations, totals): every sm_90 kernel with its launches from the plan cases, and what breaks the
    H200's limits."""
    kernels, callee_spills = parse_ptxas(C.ptxas_report())
    violations = [f"device function spills (its callers pay): {item}" for item in callee_spills]
    persistent_max: dict[str, int] = {}
    launches = 0
    for case, fn in plan_cases(C, lstm_hidden_sizes):
        for launch in C.launch_plan(fn, **H200):
            launches += 1
            kernel = kernels.get(kernel_key(launch["kernel"]))
            if kernel is None:
                violations.append(f"{case}: launches {launch['kernel']}, which ptxas did not report for {ARCHS[0]}")
                continue
            kernel.launches.append((case, launch))
            if launch["cooperative"] and (m := re.fullmatch(r"lstm_seq auto (\w+) H=(\d+)", case)):
                persistent_max[m.group(1)] = max(persistent_max.get(m.group(1), 0), int(m.group(2)))
            where = f"{kernel.label} ({case})"
            total = kernel.static_smem + launch["smem"]
            if total > MAX_DYNAMIC_SMEM_OPTIN:
                violations.append(
                    f"{where}: {kernel.static_smem} B static + {launch['smem']} B dynamic shared "
                    f"memory > {MAX_DYNAMIC_SMEM_OPTIN} B per block"
                )
            if launch["smem"] > MAX_SMEM_WITHOUT_OPTIN and launch["smem_opt_in"] < launch["smem"]:
                violations.append(
                    f"{where}: asks for {launch['smem']} B of dynamic shared memory, but set "
                    f"MaxDynamicSharedMemorySize to {launch['smem_opt_in']}"
                )
            regs_per_block = round_up(kernel.registers, REGISTER_GRANULE) * round_up(launch["block"], 32)
            if regs_per_block > REGISTERS_PER_SM:
                violations.append(
                    f"{where}: {regs_per_block} registers per block of {launch['block']} threads > {REGISTERS_PER_SM}"
                )
    refused = []
    for case, fn in too_large_cases(C):
        try:
            C.launch_plan(fn, **H200)
        except ValueError:
            refused.append(case)
        else:
            violations.append(f"{case}: past the largest supported size, yet the launcher accepted it")
    for kernel in kernels.values():
        if not kernel.launches:
            violations.append(f"{kernel.label}: no plan case launches it (add one to tests/cuda_resources.py)")
        if kernel.registers > MAX_REGISTERS_PER_THREAD:
            violations.append(f"{kernel.label}: {kernel.registers} registers > {MAX_REGISTERS_PER_THREAD}")
        spills = kernel.spill_stores + kernel.spill_loads
        if spills > SPILL_BUDGET.get(kernel.label, 0):
            violations.append(
                f"{kernel.label}: spills {kernel.spill_stores} B stored / {kernel.spill_loads} B loaded "
                f"(budget {SPILL_BUDGET.get(kernel.label, 0)} B)"
            )
        if kernel.static_smem > MAX_STATIC_SMEM:
            violations.append(f"{kernel.label}: {kernel.static_smem} B of static shared memory > {MAX_STATIC_SMEM}")
    rows = sorted(kernels.values(), key=lambda k: k.label)
    largest = [k.static_smem + (k.largest_launch() or ("", {"smem": 0}))[1]["smem"] for k in rows]
    totals = dict(
        kernels=len(rows),
        launches=launches,
        violations=len(violations),
        max_registers=max((k.registers for k in rows), default=0),
        spill_bytes=sum(k.spill_stores + k.spill_loads for k in rows),
        max_smem=max(largest, default=0),
        largest_persistent_lstm_hidden=persistent_max,
        refused=refused,
    )
    return rows, violations, totals


def format_table(rows: list[Kernel], totals: dict) -> str:
    header = ("kernel", "regs", "spill st/ld", "stack", "static smem", "dyn smem (max)", "threads", "at")
    lines = []
    for k in rows:
        case, launch = k.largest_launch() or ("never launched", {"smem": 0, "block": 0})
        lines.append(
            (
                k.label,
                str(k.registers),
                f"{k.spill_stores}/{k.spill_loads}",
                str(k.stack),
                str(k.static_smem),
                str(launch["smem"]),
                str(launch["block"]),
                case,
            )
        )
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    left = (0, len(header) - 1)  # names left-aligned, numbers right-aligned

    def cell(i: int, text: str) -> str:
        return text.ljust(widths[i]) if i in left else text.rjust(widths[i])

    out = ["  ".join(cell(i, text) for i, text in enumerate(row)).rstrip() for row in [header, *lines]]
    out.append(
        f"{totals['kernels']} kernels ({'/'.join(sorted({k.arch for k in rows})) or '?'}), "
        f"{totals['launches']} launches planned, "
        f"max {totals['max_registers']} registers/thread, {totals['spill_bytes']} spill bytes, max "
        f"{totals['max_smem']} of {MAX_DYNAMIC_SMEM_OPTIN} B shared memory per block, largest persistent LSTM hidden "
        f"size {totals['largest_persistent_lstm_hidden']}, refused past the limits: {len(totals['refused'])} cases, "
        f"{totals['violations']} violations"
    )
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ SASS markers
# Instructions that show which hardware path a kernel takes: wgmma, the Ampere mma.sync path, TMA loads and stores,
# warp specialisation's register hand-over, cp.async.
SASS_MARKERS = ("HGMMA", "HMMA.16816", "UTMALDG", "UTMASTG", "USETMAXREG", "LDGSTS")
# What every sm_90a kernel's design promises (the CUTLASS warp-specialised TMA + wgmma GEMMs: linear_act's forward,
# and its backward's dgrad and wgrad).
SM90A_REQUIRED = ("HGMMA", "UTMALDG", "USETMAXREG")
# Kernels whose design promises something else, by label prefix. conv2d_act's implicit GEMMs (forward, dgrad,
# wgrad): CUTLASS 4.2 has no persistent (cooperative, ping-pong) conv schedule, and its plain warp-specialised kernel
# (one producer, one consumer warpgroup) hands no registers over, so no USETMAXREG; its TMA loads are im2col ones
# (wgrad: dz tiled, x im2col) and D leaves by TMA store.
# Its activation pass (y = act(z) when z is wanted) is elementwise: no MMA and no TMA by design.
SM90A_REQUIRED_BY_PREFIX = {
    "conv2d_act_sm90_kernel<": ("HGMMA", "UTMALDG", "UTMASTG"),
    "conv2d_act_dgrad_sm90_kernel<": ("HGMMA", "UTMALDG", "UTMASTG"),
    "conv2d_act_wgrad_sm90_kernel<": ("HGMMA", "UTMALDG", "UTMASTG"),
    "conv2d_act_activation_pass_kernel<": (),
}


def sm90a_required(label: str) -> tuple[str, ...]:
    """The SASS markers an sm_90a kernel's design promises."""
    return next((req for prefix, req in SM90A_REQUIRED_BY_PREFIX.items() if label.startswith(prefix)), SM90A_REQUIRED)


PERFORMANCE_LOSS = "Potential Performance Loss"


def find_cuobjdump() -> str:
    """cuobjdump from PATH, else the one the triton wheel carries (CUDA toolkits without it are common here)."""
    if found := shutil.which("cuobjdump"):
        return found
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not bundled.exists():
        raise RuntimeError("cuobjdump was found neither on PATH nor in the triton wheel (backends/nvidia/bin)")
    return str(bundled)


def parse_sass(text: str) -> dict[tuple[str, str], set[str]]:
    """`cuobjdump -sass` output -> {(kernel_key, arch): the SASS_MARKERS its code contains}."""
    found: dict[tuple[str, str], set[str]] = {}
    arch, mangled, current = None, [], None
    for line in text.splitlines():
        if m := re.match(r"\s*arch = (sm_\w+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            current = set()
            mangled.append((m.group(1), arch, current))
        elif current is not None:
            current.update(marker for marker in SASS_MARKERS if marker in line)
    labels = demangle([name for name, _, _ in mangled])
    for (_, arch, markers), label in zip(mangled, labels, strict=True):
        found.setdefault((kernel_key(label), arch), set()).update(markers)
    return found


def module_sass(C) -> str:
    done = subprocess.run([find_cuobjdump(), "-sass", C.__file__], capture_output=True, text=True, check=True)
    return done.stdout


def check_sass(C, sass: str | None = None) -> tuple[dict[tuple[str, str], set[str]], list[str]]:
    """(markers, violations): each kernel's SASS markers by (kernel, arch), and what breaks the Hopper promises."""
    markers = parse_sass(module_sass(C) if sass is None else sass)
    violations = [f"ptxas: {line.strip()}" for line in C.ptxas_report().splitlines() if PERFORMANCE_LOSS in line]
    hopper = {key: found for key, found in markers.items() if key[1] == "sm_90a"}
    if not hopper:
        violations.append("no sm_90a kernel in deepfuse._C: the Hopper GEMM is missing (built with DEEPFUSE_SM90=0?)")
    for (label, arch), found in sorted(hopper.items()):
        if missing := [marker for marker in sm90a_required(label) if marker not in found]:
            violations.append(f"{label} ({arch}): its SASS lacks {', '.join(missing)}")
    return markers, violations


def format_sass_table(markers: dict[tuple[str, str], set[str]]) -> str:
    header = ("kernel", "arch", *SASS_MARKERS)
    ordered = sorted(markers.items(), key=lambda item: (item[0][1], item[0][0]))  # by arch, then kernel
    rows = [header] + [
        (label, arch, *("yes" if m in found else "-" for m in SASS_MARKERS)) for (label, arch), found in ordered
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip() for row in rows)


if __name__ == "__main__":
    from deepfuse import _C

    kernel_rows, problems, summary = check(_C)
    print(format_table(kernel_rows, summary))
    sass_markers, sass_problems = check_sass(_C)
    print()
    print(format_sass_table(sass_markers))
    problems += sass_problems
    print("\n".join(problems) or "no violations")
    raise SystemExit(1 if problems else 0)
