"""Builds deepfuse._C for the CPU: every csrc/*.cu through host_source.py and shim.h (lstm.cu through
extract_lstm.py's seams), csrc/bindings.cpp unchanged, the CUDA runtime calls from cudart_stubs.inc; all under
AddressSanitizer + UBSan, with DEEPFUSE_SM90_KERNELS=1 and the CUTLASS GEMMs replaced by sm90_standins.cpp, so
that fp16/bf16 linear_act backward on the emulated 9.0 device takes the Hopper path's own host code and grad_preact
kernels (the case lines name the backward's kernels). Then it runs the ops' own CUDA launchers
(``deepfuse.ops.<op>._FWD["cuda"]`` / ``_BWD["cuda"]``) on CPU tensors through that module and checks every output
against the ops' torch implementations in float64, with the test suite's rule (error <= 2 x torch's own error in the
same dtype + ATOL, tests/tolerances.py). Outputs start as NaN (an unwritten element fails). Files with Hopper-only
code (``*_sm90.cu``: CUTLASS, wgmma) are skipped with the reason. See README.md.

    python tools/cuda_host_emulation/run_kernels.py --quick         # linear_act, conv2d_act, attention
    python tools/cuda_host_emulation/run_kernels.py --op attention  # one op, every case
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CSRC = REPO / "csrc"
CHILD_FLAG = "_DEEPFUSE_HOST_C"  # set in the sanitizer-preloaded child: the built module's path
FLAGS = [
    "-std=c++20",
    "-fsanitize=address,undefined",
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fPIC",
    "-pthread",
    "-w",
    "-DDEEPFUSE_SM90_KERNELS=1",
]
STUBS = (
    '#include "shim.h"\n#include "cudart_stubs.inc"\nnamespace deepfuse { const char* ptxas_report() { return ""; } }\n'
)


# ------------------------------------------------------------------------------------------------------ build
def translation_units(out: Path) -> list[Path]:
    """Writes the host sources into ``out``; returns them (the rewritten headers go to out/include)."""
    sys.path.insert(0, str(HERE))
    from extract_lstm import host_source as lstm_host_source
    from host_source import hopper_only, host_source, write_host_headers

    write_host_headers(CSRC, out / "include")
    units = []
    for cu in sorted(CSRC.glob("*.cu")):
        reason = hopper_only(cu)
        if reason is not None:
            print(f"skipped {reason}", flush=True)
            continue
        unit = out / f"{cu.stem}_host.cpp"
        unit.write_text(lstm_host_source(cu) if cu.name == "lstm.cu" else host_source(cu))
        units.append(unit)
    (out / "stubs.cpp").write_text(STUBS)
    units.append(out / "stubs.cpp")
    units.append(HERE / "sm90_standins.cpp")
    units.append(CSRC / "bindings.cpp")
    return units


def build(out: Path, jobs: int) -> Path:
    import pybind11
    from run_lstm import cuda_include

    out.mkdir(parents=True, exist_ok=True)
    units = translation_units(out)
    includes = [
        f"-I{out / 'include'}",
        f"-I{HERE}",
        f"-I{CSRC}",
        f"-I{cuda_include()}",
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
    ]
    start = time.time()

    def compile_unit(unit: Path) -> Path:
        obj = out / f"{unit.stem}.o"
        subprocess.run(["g++", *FLAGS, *includes, "-c", str(unit), "-o", str(obj)], check=True)
        return obj

    with ThreadPoolExecutor(jobs) as pool:
        objects = list(pool.map(compile_unit, units))
    module = out / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["g++", *FLAGS, "-shared", *map(str, objects), "-o", str(module)], check=True)
    print(f"built {module} from {len(units)} translation units ({time.time() - start:.0f} s)", flush=True)
    return module


def run_child(module: Path, argv: list[str]) -> int:
    """The module is loaded into Python, so the sanitizer runtimes must be preloaded into a fresh interpreter."""
    runtimes = [
        subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        for name in ("libasan.so", "libubsan.so")
    ]
    env = dict(
        os.environ,
        **{
            CHILD_FLAG: str(module),
            "LD_PRELOAD": " ".join(runtimes),
            "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        },
    )
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, __file__, *argv], env=env).returncode


# ------------------------------------------------------------------------------------------------------ checks
def load_host_module(path: str):
    """The host-built module as deepfuse._C, and torch.cuda's stream/device calls answered for CPU tensors."""
    import torch

    spec = importlib.util.spec_from_file_location("deepfuse._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["deepfuse._C"] = module
    torch.cuda.device = lambda device: contextlib.nullcontext()
    torch.cuda.current_stream = lambda device=None: SimpleNamespace(cuda_stream=0)
    from deepfuse.kernels import utils

    utils.POISON_OUTPUTS = True
    return module


@dataclass(frozen=True)
class Case:
    """One shape of an op: ``make(dtype) -> (forward args, backward args from (grad, saved))``. ``backward``: the
    kernels the cuda backward must launch, in order, for a dtype (``backward_kernels``), or None when not checked;
    ``dtypes``: the dtypes it runs in (None: all asked for)."""

    name: str
    make: Callable
    backward: Callable | None = None
    dtypes: tuple[str, ...] | None = None


def _randn(*shape, dtype):
    import torch

    return torch.randn(*shape, dtype=torch.float64).to(dtype)


def linear_cases(quick: bool):
    # (M, K, N, activation); N and K multiples of 8 take the sm_90a backward in fp16/bf16 (dz stored, "none": dz = dy).
    shapes = [
        (37, 29, 53, "gelu"),
        (1, 17, 1, "relu"),
        (70, 64, 130, "silu"),
        (37, 24, 40, "tanh"),
        (70, 16, 64, "none"),
    ]
    if quick:
        shapes = [(37, 29, 53, "gelu"), (70, 64, 130, "relu"), (37, 24, 40, "tanh")]
    for M, K, N, activation in shapes:
        for bias in (True, False):

            def make(dtype, M=M, K=K, N=N, activation=activation, bias=bias):
                x, w = _randn(M, K, dtype=dtype), _randn(N, K, dtype=dtype) / K**0.5
                b = _randn(N, dtype=dtype) if bias else None
                fwd = (x, w, b, activation, True)
                return fwd, lambda grad, saved: (grad, saved, x, w, activation, bias, True, True)

            yield Case(f"M{M}K{K}N{N}-{activation}-bias{int(bias)}", make)


def conv_cases(quick: bool):
    geometries = [  # (N, C_in, H, W, C_out, k, stride, pad, dilation, groups, activation, residual)
        (2, 3, 9, 11, 8, 3, 1, 1, 1, 1, "relu", False),
        (2, 8, 7, 7, 16, 3, 2, 1, 1, 2, "gelu", True),
        (1, 4, 6, 5, 4, 1, 1, 0, 1, 1, "silu", False),
        (2, 6, 8, 8, 6, 3, 1, 2, 2, 6, "tanh", False),
    ]
    for N, C, H, W, C_out, k, s, p, d, g, activation, residual in geometries[: 2 if quick else None]:

        def make(
            dtype, N=N, C=C, H=H, W=W, C_out=C_out, k=k, s=s, p=p, d=d, g=g, activation=activation, residual=residual
        ):
            from deepfuse.ops.conv2d_act import _out_shape

            x, w = _randn(N, C, H, W, dtype=dtype), _randn(C_out, C // g, k, k, dtype=dtype) / (C * k * k / g) ** 0.5
            b = _randn(C_out, dtype=dtype)
            stride, pad, dilation = (s, s), (p, p, p, p), (d, d)
            r = _randn(*_out_shape(x, w, stride, pad, dilation), dtype=dtype) if residual else None
            fwd = (x, w, b, r, stride, pad, dilation, g, activation, True)
            return fwd, lambda grad, saved: (
                grad,
                saved,
                x,
                w,
                stride,
                pad,
                dilation,
                g,
                activation,
                True,
                True,
                True,
                residual,
            )

        yield Case(f"N{N}C{C}H{H}W{W}O{C_out}k{k}s{s}p{p}d{d}g{g}-{activation}{'-residual' if residual else ''}", make)


# The cuda backward's launches on the emulated 9.0 device, by role: grad_preact.cu's dz (and db's partial sums) and
# db, the sm_90a stand-ins, the portable WMMA implicit GEMMs. A launch matches when its label starts so.
def backward_kernels(roles: tuple[str, ...]) -> Callable:
    def labels(dtype_name: str) -> list[str]:
        elem, cutlass = {"float16": ("__half", "half_t"), "bfloat16": ("__nv_bfloat16", "bfloat16_t")}[dtype_name]
        by_role = {
            "preact": f"grad_preact_kernel<{elem}>",
            "bias": f"grad_bias_kernel<{elem}>",
            "dgrad_sm90": f"conv2d_act_dgrad_sm90_kernel<cutlass::{cutlass}> (host stand-in)",
            "wgrad_sm90": f"conv2d_act_wgrad_sm90_kernel<cutlass::{cutlass}> (host stand-in)",
            "dgrad_wmma": f"gemm_detail::fused_gemm_wmma_kernel<{elem}, FusedGemm<OutputGradTaps,",
            "wgrad_wmma": f"gemm_detail::fused_gemm_wmma_kernel<{elem}, FusedGemm<OutputGradByChannel,",
        }
        return [by_role[role] for role in roles]

    return labels


def conv_sm90_inputs(dtype, geometry, activation, bias, residual, need_x, need_w, w_layout):
    """channels_last x (and residual) and W in ``w_layout``: the forward's and the backward's arguments."""
    import torch

    from deepfuse.ops.conv2d_act import _out_shape

    N, C, H, W, C_out, k, s, p = geometry
    x = _randn(N, C, H, W, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = (_randn(C_out, C, k, k, dtype=dtype) / (C * k * k) ** 0.5).contiguous(memory_format=w_layout)
    b = _randn(C_out, dtype=dtype) if bias else None
    stride, pad, dilation = (s, s), (p, p, p, p), (1, 1)
    r = None
    if residual:
        r = _randn(*_out_shape(x, w, stride, pad, dilation), dtype=dtype).contiguous(memory_format=torch.channels_last)
    fwd = (x, w, b, r, stride, pad, dilation, 1, activation, True)
    return fwd, lambda grad, saved: (
        grad,
        saved,
        x,
        w,
        stride,
        pad,
        dilation,
        1,
        activation,
        bias,
        need_x,
        need_w,
        residual,
    )


def conv_sm90_cases(quick: bool):
    """channels_last fp16/bf16 convolutions whose backward reaches the sm_90a side (stand-ins) on the emulated 9.0
    device, each with the launches it must make: a case that falls back to WMMA fails."""
    import torch

    cl, contiguous = torch.channels_last, torch.contiguous_format
    both = ("preact", "bias", "dgrad_sm90", "wgrad_sm90")
    strided = ("preact", "bias", "wgrad_sm90", "dgrad_wmma")  # CUTLASS 4.2's dgrad: unit stride only
    db_only = ("preact", "bias")  # no GEMM: grad_preact.cu sums db
    dz_is_dy = ("dgrad_sm90", "wgrad_sm90")  # "none", no bias: nothing to store
    dx_db = ("preact", "bias", "dgrad_sm90")  # db on grad_preact.cu with dz
    strided_dx_db = ("preact", "bias", "dgrad_wmma")  # dz not stored (no sm_90a GEMM reads it), db still summed
    cases = [  # name, (N, C_in, H, W, C_out, k, stride, pad), activation, bias, residual, (dx, dW), W layout, launches
        ("unit-stride", (2, 8, 7, 9, 16, 3, 1, 1), "relu", True, False, (True, True), cl, both),
        ("stride2", (2, 8, 9, 8, 8, 3, 2, 1), "silu", True, False, (True, True), cl, strided),
        ("db-alone", (2, 16, 5, 6, 8, 3, 1, 1), "gelu", True, False, (False, False), cl, db_only),
        ("none-nobias", (1, 8, 6, 7, 8, 3, 1, 0), "none", False, False, (True, True), cl, dz_is_dy),
        ("1x1-contiguous-weight", (2, 16, 5, 7, 24, 1, 1, 0), "tanh", True, False, (True, True), contiguous, both),
        # nn.Conv2d's NCHW 3x3 weight beside a channels_last x: the cuda backend passes a channels_last copy
        ("nchw-weight", (2, 8, 7, 9, 16, 3, 1, 1), "gelu", True, False, (True, True), contiguous, both),
        ("residual", (2, 8, 6, 6, 72, 3, 1, 1), "gelu", True, True, (True, True), cl, both),  # 2 column blocks of dz
        ("dx-db", (2, 8, 6, 5, 16, 3, 1, 1), "relu", True, False, (True, False), cl, dx_db),
        ("dW-only", (2, 8, 6, 5, 16, 3, 1, 1), "silu", False, False, (False, True), cl, ("preact", "wgrad_sm90")),
        ("stride2-dx-db", (2, 8, 9, 8, 8, 3, 2, 1), "tanh", True, False, (True, False), cl, strided_dx_db),
    ]
    for name, geometry, activation, bias, residual, (need_x, need_w), w_layout, roles in cases[: 2 if quick else None]:
        spec = (geometry, activation, bias, residual, need_x, need_w, w_layout)
        make = lambda dtype, spec=spec: conv_sm90_inputs(dtype, *spec)  # noqa: E731
        yield Case(f"sm90-{name}-{activation}", make, backward_kernels(roles), ("float16", "bfloat16"))


def attention_cases(quick: bool):
    import torch

    shapes = [  # (B, Hq, Hkv, Nq, Nk, D, causal, padding)
        (2, 2, 2, 17, 17, 32, False, True),
        (1, 4, 2, 33, 20, 64, True, False),
        (2, 2, 1, 5, 70, 48, False, True),
    ]
    for B, Hq, Hkv, Nq, Nk, D, causal, padding in shapes[: 2 if quick else None]:

        def make(dtype, B=B, Hq=Hq, Hkv=Hkv, Nq=Nq, Nk=Nk, D=D, causal=causal, padding=padding):
            q = _randn(B, Hq, Nq, D, dtype=dtype)
            k, v = _randn(B, Hkv, Nk, D, dtype=dtype), _randn(B, Hkv, Nk, D, dtype=dtype)
            mask = None
            if padding:
                lengths = torch.arange(B) * 3 % Nk + 1
                mask = torch.arange(Nk)[None, :] >= lengths[:, None]
            scale = D**-0.5
            fwd = (q, k, v, mask, causal, scale)
            return fwd, lambda grad, saved: (grad, q, k, v, saved[0], saved[1], mask, causal, scale)

        yield Case(
            f"B{B}Hq{Hq}Hkv{Hkv}Nq{Nq}Nk{Nk}D{D}{'-causal' if causal else ''}{'-padding' if padding else ''}", make
        )


def conv2d_act_cases(quick: bool):
    yield from conv_cases(quick)
    yield from conv_sm90_cases(quick)


OPS = {"linear_act": linear_cases, "conv2d_act": conv2d_act_cases, "attention": attention_cases}
# What each op's backward returns, in order.
GRADIENTS = {
    "linear_act": ("grad_x", "grad_weight", "grad_bias"),
    "conv2d_act": ("grad_x", "grad_weight", "grad_bias", "grad_residual"),
    "attention": ("dq", "dk", "dv"),
}


def _upcast(value):
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.double()
    return value


def standin_calls() -> tuple[int, int]:
    """How often the real (not dry-run) backward reached the conv dgrad and wgrad stand-ins (sm90_standins.cpp)."""
    import ctypes

    library = ctypes.CDLL(os.environ[CHILD_FLAG])  # the loaded module itself: dlopen hands back the same handle
    calls = library.deepfuse_host_conv_standin_calls
    calls.restype = ctypes.c_long
    return calls(0), calls(1)


def planned_backward(module, case: Case, dtype_name: str, run, notes: list[str]) -> list[str]:
    """The kernels the cuda backward launches, from a dry run of the same launcher (``run``), in the case line's
    notes; the problems when they are not the case's expected ones."""
    C = sys.modules["deepfuse._C"]
    planned = [launch["kernel"] for launch in C.launch_plan(run)]
    notes.append(f"backward: {', '.join(label.split('<')[0] for label in planned) or 'stand-ins only'}")
    if case.backward is None:
        return []
    expected = case.backward(dtype_name)
    if len(planned) != len(expected) or not all(map(str.startswith, planned, expected)):
        return [f"backward launches {planned}, expected {expected}"]
    return []


def explained_conv_backward(module, case: Case, dtype_name: str, fwd_args) -> list[str]:
    """deepfuse.explain's account (``_cuda_kernels`` on a 9.0 device) of the dx and dW kernels, against the launches
    the case expects; for cases that run both gradients (explain describes a backward wanting all of them)."""

    expected = case.backward(dtype_name)
    wanted = [
        next((label for label in expected if f"_{kind}_sm90_kernel" in label or f"<{grads}," in label), None)
        for kind, grads in (("dgrad", "OutputGradTaps"), ("wgrad", "OutputGradByChannel"))
    ]
    if None in wanted:
        return []
    x, w, b, r, stride, pad, dilation, groups, activation, _ = fwd_args
    capability = module.device_capability
    module.device_capability = lambda device: 90
    try:
        explained = module._cuda_kernels(
            x.detach().requires_grad_(), w, b, stride, pad[::2], dilation, groups, activation, residual=r
        )
    finally:
        module.device_capability = capability
    kernels = [part.split(": ", 1)[1].split(" (")[0] for part in explained.split("; ") if part.startswith("backward")]
    for kernel, label in zip(kernels, wanted, strict=True):
        if not kernel.startswith(label.removesuffix(" (host stand-in)")):
            return [f"explain says {kernels}, the backward launches {wanted}"]
    return []


def check_case(op: str, case: Case, dtype_name: str, notes: list[str]) -> list[str]:
    """Forward and backward of the host-built kernels vs the op's torch implementation in float64; the problems.
    Appends what the case line should also say to ``notes``. For a case that names its backward kernels, also checks
    that a dry run plans exactly those and that the real run reached the conv stand-ins as often."""
    import importlib

    import torch

    from tests.tolerances import assert_close_to_reference

    dtype = getattr(torch, dtype_name)
    module = importlib.import_module(f"deepfuse.ops.{op}")
    fwd_args, bwd_args = case.make(dtype)
    ref_fwd_args = tuple(map(_upcast, fwd_args))
    problems = []
    forward = {
        "cuda": module._FWD["cuda"](*fwd_args),
        "torch": module._FWD["torch"](*fwd_args),
        "ref": module._FWD["torch"](*ref_fwd_args),
    }
    # In the output's own layout (channels_last for a channels_last x), as autograd would hand it over.
    grad = torch.empty_like(forward["cuda"][0]).copy_(_randn(*forward["cuda"][0].shape, dtype=dtype))
    if op != "attention":
        cuda_backward_args = bwd_args(grad, forward["cuda"][1])
        problems += planned_backward(module, case, dtype_name, lambda: module._BWD["cuda"](*cuda_backward_args), notes)
        if op == "conv2d_act" and case.backward is not None:
            problems += explained_conv_backward(module, case, dtype_name, fwd_args)
    calls_before = standin_calls()
    backward = {}
    for name, out in forward.items():
        saved = out if op == "attention" else out[1]  # attention's backward takes (out, lse), the others preact
        args = bwd_args(grad, saved)
        backward[name] = module._BWD["torch" if name == "ref" else name](
            *(map(_upcast, args) if name == "ref" else args)
        )
    if case.backward is not None:
        expected = case.backward(dtype_name)
        wanted = tuple(sum(f"_{kind}_sm90_kernel" in label for label in expected) for kind in ("dgrad", "wgrad"))
        reached = tuple(after - before for before, after in zip(calls_before, standin_calls(), strict=True))
        if reached != wanted:
            problems.append(f"the backward reached the (dgrad, wgrad) stand-ins {reached} times, expected {wanted}")
    grad_weight = backward["cuda"][1]
    if op == "conv2d_act" and grad_weight.numel():  # dW in W's own layout, as torch gives it
        weight = fwd_args[1]
        for layout in (torch.contiguous_format, torch.channels_last):
            if grad_weight.is_contiguous(memory_format=layout) != weight.is_contiguous(memory_format=layout):
                problems.append(f"grad_weight strides {grad_weight.stride()}, W's are {weight.stride()}")
                break
    labels = ["out", *GRADIENTS[op]]
    values = {name: [forward[name][0], *backward[name]] for name in forward}
    if any(len(values[name]) != len(labels) for name in values):
        return [f"the backward returned {len(values['cuda']) - 1} gradients, expected {len(labels) - 1}"]
    for index, label in enumerate(labels):
        ours, theirs, ref = (values[name][index] for name in ("cuda", "torch", "ref"))
        if ours.numel() == 0 and ref.numel() == 0:
            continue
        try:
            assert_close_to_reference(label, ours, ref, theirs, dtype)
        except AssertionError as error:
            problems.append(str(error))
    if op == "attention":
        lse, ref_lse = forward["cuda"][1], forward["ref"][1]
        finite = torch.isfinite(ref_lse)
        if not torch.equal(torch.isfinite(lse), finite) or (lse[finite] - ref_lse[finite]).abs().max() > 1e-3:
            problems.append("lse: differs from the reference's log-sum-exp")
    return problems


def run_checks(args) -> int:
    import torch

    load_host_module(os.environ[CHILD_FLAG])
    failures = total = 0
    start = time.time()
    for op in args.op:
        for case in OPS[op](args.quick):
            for dtype_name in args.dtype:
                if case.dtypes is not None and dtype_name not in case.dtypes:
                    continue
                total += 1
                torch.manual_seed(total)
                notes = []
                problems = check_case(op, case, dtype_name, notes)
                failures += bool(problems)
                print(f"{'FAIL' if problems else 'ok  '} {op} {case.name} {dtype_name} {'; '.join(notes)}", flush=True)
                for problem in problems:
                    print(f"     {problem}", flush=True)
    print(f"{total - failures}/{total} cases passed in {time.time() - start:.0f} s", flush=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two cases per op (the CI-sized set)")
    parser.add_argument("--op", nargs="+", choices=sorted(OPS), default=sorted(OPS))
    parser.add_argument(
        "--dtype", nargs="+", choices=["float32", "float16", "bfloat16"], default=["float32", "float16", "bfloat16"]
    )
    parser.add_argument("--build-dir", type=Path, help="build there and keep the sources (default: a temporary one)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compiles")
    parser.add_argument("--module", type=Path, help="run a module an earlier --build-dir built (no build)")
    args = parser.parse_args()
    if os.environ.get(CHILD_FLAG):
        sys.path.insert(0, str(REPO))
        return run_checks(args)
    if args.module is not None:
        if not args.module.is_file():
            parser.error(f"--module: no such file {args.module} (expected a _C*.so from --build-dir)")
        return run_child(args.module.resolve(), sys.argv[1:])
    with contextlib.ExitStack() as stack:
        out = args.build_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deepfuse-host-c-")))
        module = build(out, args.jobs)
        return run_child(module, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
