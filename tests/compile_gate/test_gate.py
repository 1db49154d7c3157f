"""The compile gate's own logic (the gate itself runs as `python -m tests.compile_gate`, not under pytest): its
checks, its cover of configs and specialisations, and, in a process without the interpreter, that it sees
launches as a GPU would (an int equal to 1 becomes a constant), reports a kernel that does not compile and
a kernel that no case reaches."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import triton.language as tl  # the test kernel's global

from tests.compile_gate.compile import MAX_SHARED_BYTES, Compiled, ResultCache, _ptxas_numbers
from tests.compile_gate.device import Launch
from tests.compile_gate.gate import SPILL_BUDGET, check, cover_items, dtype_class, promised_markers, select, spec_class

ROOT = Path(__file__).resolve().parents[2]


def test_check_flags_each_limit():
    launch = None  # check() reads only the result
    assert check(launch, Compiled(shared=MAX_SHARED_BYTES, registers=255), autotuned=False) == []
    assert "shared memory" in check(launch, Compiled(shared=MAX_SHARED_BYTES + 1), autotuned=True)[0]
    assert "prune" in check(launch, Compiled(shared=MAX_SHARED_BYTES + 1), autotuned=True)[0]
    assert "spills" in check(launch, Compiled(spill_stores=SPILL_BUDGET + 4), autotuned=False)[0]
    assert check(launch, Compiled(spill_stores=SPILL_BUDGET), autotuned=True) == []
    # an autotuned config the autotuner could pick fails too, with the way out
    assert "prune" in check(launch, Compiled(spill_stores=SPILL_BUDGET + 4), autotuned=True)[0]
    serialised = "Potential Performance Loss: wgmma.mma_async instructions are serialized"
    assert "ptxas" in check(launch, Compiled(performance_loss=serialised), autotuned=True)[0]
    assert "ptxas" in check(launch, Compiled(performance_loss=serialised), autotuned=False)[0]
    assert "does not compile" in check(launch, Compiled(error="CompilationError: at 3:4"), autotuned=True)[0]


def test_ptxas_report_is_read():
    log = textwrap.dedent("""\
        ptxas info    : Compiling entry function 'k' for 'sm_90a'
        ptxas info    : Function properties for k
            16 bytes stack frame, 24 bytes spill stores, 40 bytes spill loads
        ptxas info    : Used 168 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
        """)
    assert _ptxas_numbers(log) == (168, 24, 40, 1024)


def _launch(kernel, dtype, block, activation, ones, warps=4):
    """A recorded launch as the gate sees it: dtype, one tile constexpr, one other constexpr, ints equal to 1."""
    pointer = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}[dtype]
    signature = {
        "x_ptr": pointer,
        "M": "constexpr" if ones else "i32",
        "ACTIVATION": "constexpr",
        "BLOCK_M": "constexpr",
    }
    constexprs = {(2,): activation, (3,): block} | ({(1,): 1} if ones else {})
    fn = type("Fn", (), {"arg_names": list(signature)})()
    key = f"{kernel}{dtype}{block}{activation}{ones}{warps}"
    return Launch(kernel, fn, key, signature, constexprs, {}, {"num_warps": warps, "num_stages": 3})


def test_select_covers_every_pair_and_config_of_autotuned_kernels_and_every_launch_of_the_others():
    launches = [
        _launch(kernel, dtype, block, activation, ones)
        for kernel in ("k.a", "k.b")
        for dtype in ("fp16", "bf16", "fp32")
        for block in (32, 64, 128)
        for activation in (0, 1, 3)
        for ones in (False, True)
    ]
    chosen = select(launches, full=False, autotuned={"k.a", "k.b"})
    assert len(chosen) < len(launches) / 2
    pairs = {(launch.kernel, dtype_class(launch), spec_class(launch)) for launch in launches}
    assert pairs == {(launch.kernel, dtype_class(launch), spec_class(launch)) for launch in chosen}
    needed = set().union(*(cover_items(launch) for launch in launches))
    assert needed == set().union(*(cover_items(launch) for launch in chosen))
    fixed = select(launches, full=False, autotuned={"k.a"})
    assert sorted(x.key for x in fixed if x.kernel == "k.b") == sorted(x.key for x in launches if x.kernel == "k.b")
    assert select(launches, full=True) == launches


def test_tma_kernels_promise_wgmma_tma_and_setmaxnreg_when_warp_specialised():
    def tma(warp_specialize, dtype="fp16"):
        launch = _launch("m._gemm_tma_kernel", dtype, 128, 0, False)
        names = [*launch.fn.arg_names, "WARP_SPECIALIZE"]
        launch.fn.arg_names = names
        launch.constexprs[(len(names) - 1,)] = warp_specialize
        return launch

    shows = {"HGMMA": 8, "UTMALDG": 3, "SYNCS": 9}
    assert check(tma(False), Compiled(markers=shows), autotuned=True) == []
    assert "USETMAXREG" in check(tma(True), Compiled(markers=shows), autotuned=True)[0]
    assert check(tma(True), Compiled(markers={**shows, "USETMAXREG": 8}), autotuned=True) == []
    assert "HGMMA" in check(tma(False), Compiled(markers={"HMMA": 8, "UTMALDG": 3}), autotuned=True)[0]
    assert promised_markers(_launch("m._gemm_kernel", "fp16", 128, 0, False)) == ()
    weight_by_tma = _launch("m._conv_kernel", "fp16", 128, 0, False)  # a pointer kernel with one descriptor
    weight_by_tma.signature["w_desc"] = "tensordesc<fp16[1, 1, 64, 32]>"
    assert promised_markers(weight_by_tma) == ("HGMMA", "UTMALDG")
    assert promised_markers(_launch("m._gemm_tma_kernel", "fp16", 32, 0, False)) == ("UTMALDG",)  # 32 rows: HMMA
    assert promised_markers(_launch("m._gemm_tma_kernel", "fp32", 128, 0, False)) == ("UTMALDG",)  # IEEE: FMAs
    loss = "ptxas info: (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized"
    assert "Potential Performance Loss" in check(tma(False), Compiled(markers=shows, performance_loss=loss), True)[0]
    pointer = _launch("m._gemm_kernel", "fp16", 128, 0, False)
    assert "Potential Performance Loss" in check(pointer, Compiled(performance_loss=loss), autotuned=False)[0]
    assert "prune" in check(pointer, Compiled(performance_loss=loss), autotuned=True)[0]  # autotuned: pruned


def test_sass_markers_are_read_from_a_cubin(tmp_path):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from tests.compile_gate.compile import sass_markers

    def dot_kernel(a_ptr, c_ptr):
        offs = tl.arange(0, 64)
        a = tl.load(a_ptr + offs[:, None] * 64 + offs[None, :])
        tl.store(c_ptr + offs[:, None] * 64 + offs[None, :], tl.dot(a, a))

    # JITFunction itself: the test session's TRITON_INTERPRET=1 turns @triton.jit into an interpreted function
    source = ASTSource(fn=JITFunction(dot_kernel), signature={"a_ptr": "*fp16", "c_ptr": "*fp32"}, constexprs={})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    markers = sass_markers(compiled.asm["cubin"])
    assert markers.get("HGMMA", 0) > 0 and "HMMA" not in markers and "UTMALDG" not in markers


def test_result_cache_round_trip_skips_failures(tmp_path):
    cache = ResultCache(str(tmp_path))
    launch = _launch("k.a", "fp16", 64, 0, False)
    launch.fn.cache_key = "source-hash"
    assert cache.get(launch) is None
    cache.put(launch, Compiled(shared=1024, registers=90, markers={"HGMMA": 4}))
    assert cache.get(launch) == Compiled(shared=1024, registers=90, markers={"HGMMA": 4}, cached=True)
    launch.fn.cache_key = "edited source"
    assert cache.get(launch) is None
    cache.put(launch, Compiled(error="CompilationError"))
    assert cache.get(launch) is None


_PROBE = """
import json, sys
import torch
from tests.compile_gate import device

recorder = device.install()
sys.path.insert(0, sys.argv[1])
import gate_probe.kernels as probe  # after install(): kernels see the pretend H200
from tests.compile_gate.compile import compile_launch
from tests.compile_gate.gate import kernel_functions, unreached

out = torch.zeros(4, dtype=torch.int64)
probe._widen_kernel[(1,)](out, 1)
probe._widen_kernel[(1,)](out, 5)
launches = sorted(recorder.launches.values(), key=lambda launch: len(launch.constexprs))
functions, _ = kernel_functions("gate_probe")
print(json.dumps({"constant_one": [list(launch.constexpr_values()) for launch in launches],
                  "errors": [compile_launch(launch).error[:200] for launch in launches],
                  "unreached": unreached(functions, {launch.kernel for launch in launches})}))
"""

_PROBE_KERNELS = """
import triton
import triton.language as tl


@triton.jit
def _widen(n):
    return n.to(tl.int64)  # a constant (an argument equal to 1) has no .to(): fails to compile


@triton.jit
def _widen_kernel(out_ptr, B):
    tl.store(out_ptr + tl.arange(0, 4), _widen(B) + tl.zeros((4,), dtype=tl.int64))


@triton.jit
def _never_launched_kernel(out_ptr):
    tl.store(out_ptr, 1)
"""


def test_gate_sees_launches_as_a_gpu_and_reports_failures(tmp_path):
    package = tmp_path / "gate_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(_PROBE_KERNELS)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["constant_one"] == [[], ["B"]]  # B == 5 stays an argument, B == 1 became a constant
    ok, one = report["errors"]
    assert ok == "" and "CompilationError" in one
    assert report["unreached"] == ["gate_probe.kernels._never_launched_kernel"]


_VARLEN_PROBE = """
import json
from tests.compile_gate import device

recorder = device.install()
from tests.compile_gate.cases import ATTENTION, DTYPES, tf32
from tests.compile_gate.gate import dtype_class, promised_markers, record

errors = record(recorder, {"attention": ATTENTION}, DTYPES, tf32, only="varlen D64")
kernels = {}
for launch in recorder.launches.values():
    name = launch.kernel.rsplit(".", 1)[-1]
    kernels.setdefault(dtype_class(launch), {})[name] = list(promised_markers(launch))
print(json.dumps({"errors": errors, "kernels": kernels}))
"""


def test_gate_compiles_packed_attention_on_its_tma_kernels(tmp_path):
    # The varlen cases reach the TMA twins on the pretend H200 (so the gate demands wgmma + TMA of them) wherever the
    # padded layout would: fp16/bf16 and TF32 at D = 64; IEEE fp32 keeps the pointer kernels.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-c", _VARLEN_PROBE], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    tma = ["_attention_bwd_dkdv_tma_kernel", "_attention_bwd_dq_tma_kernel", "_attention_fwd_tma_kernel"]
    for dtype in ("fp16", "bf16", "tf32"):
        assert sorted(report["kernels"][dtype]) == tma, dtype
        assert all(markers[:2] == ["HGMMA", "UTMALDG"] for markers in report["kernels"][dtype].values())
    assert sorted(report["kernels"]["fp32"]) == [
        "_attention_bwd_dkdv_kernel",
        "_attention_bwd_dq_kernel",
        "_attention_fwd_kernel",
    ]
