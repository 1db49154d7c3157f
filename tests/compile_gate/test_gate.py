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

from tests.compile_gate.compile import MAX_SHARED_BYTES, Compiled, _ptxas_numbers
from tests.compile_gate.device import Launch
from tests.compile_gate.gate import SPILL_BUDGET, check, cover_items, select

ROOT = Path(__file__).resolve().parents[2]


def test_check_flags_each_limit():
    launch = None  # check() reads only the result
    assert check(launch, Compiled(shared=MAX_SHARED_BYTES, registers=255), autotuned=False) == []
    assert "shared memory" in check(launch, Compiled(shared=MAX_SHARED_BYTES + 1), autotuned=True)[0]
    assert "prune" in check(launch, Compiled(shared=MAX_SHARED_BYTES + 1), autotuned=True)[0]
    assert "spills" in check(launch, Compiled(spill_stores=SPILL_BUDGET + 4), autotuned=False)[0]
    assert check(launch, Compiled(spill_stores=SPILL_BUDGET + 4), autotuned=True) == []  # the autotuner's choice
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
    signature = {"x_ptr": pointer, "M": "constexpr" if ones else "i32", "ACTIVATION": "constexpr",
                 "BLOCK_M": "constexpr"}  # fmt: skip
    constexprs = {(2,): activation, (3,): block} | ({(1,): 1} if ones else {})
    fn = type("Fn", (), {"arg_names": list(signature)})()
    key = f"{kernel}{dtype}{block}{activation}{ones}{warps}"
    return Launch(kernel, fn, key, signature, constexprs, {}, {"num_warps": warps, "num_stages": 3})


def test_select_covers_every_config_dtype_and_specialisation():
    launches = [_launch(kernel, dtype, block, activation, ones)
                for kernel in ("k.a", "k.b") for dtype in ("fp16", "bf16", "fp32") for block in (32, 64, 128)
                for activation in (0, 1, 3) for ones in (False, True)]  # fmt: skip
    chosen = select(launches, full=False)
    assert len(chosen) < len(launches) / 4
    needed = set().union(*(cover_items(launch) for launch in launches))
    assert needed == set().union(*(cover_items(launch) for launch in chosen))
    assert select(launches, full=True) == launches


_PROBE = '''
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
'''

_PROBE_KERNELS = '''
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
'''


def test_gate_sees_launches_as_a_gpu_and_reports_failures(tmp_path):
    package = tmp_path / "gate_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "kernels.py").write_text(_PROBE_KERNELS)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["constant_one"] == [[], ["B"]]  # B == 5 stays an argument, B == 1 became a constant
    ok, one = report["errors"]
    assert ok == "" and "CompilationError" in one
    assert report["unreached"] == ["gate_probe.kernels._never_launched_kernel"]
