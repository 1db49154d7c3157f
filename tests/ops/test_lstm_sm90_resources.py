"""The persistent LSTM kernels, compiled for sm_90a without a GPU: every configuration layout_for picks at its
limits must fit a block's shared memory (a launch would fail) and stay (almost) free of register spills.

The compile runs in a subprocess: the test session interprets Triton (TRITON_INTERPRET=1), which replaces
the kernels by interpreted functions that cannot be compiled.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

MAX_SHARED_BYTES = 227 * 1024  # per block on sm_90 (opt-in)
MAX_SPILL_BYTES = 512  # fp32 forward at H = 128 spills ~300 B (FMA dot); nothing else should spill
# (dtype, hidden size) at each boundary of layout_for: single slice, 16-unit slices, the largest persistent size
CASES = [("float16", 64), ("bfloat16", 512), ("float32", 32), ("float32", 128)]


def _report(dtype_name: str, hidden_size: int) -> list[dict]:
    """Shared memory and ptxas spill bytes of the forward and backward kernels at (dtype, hidden_size)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from deepfuse.kernels import lstm

    dtype = getattr(torch, dtype_name)
    layout = lstm.layout_for(64, hidden_size, dtype, num_sms=132)
    ptr = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}[dtype_name]
    common = {"T": "i32", "B": "i32", "H": "i32", "swr": "i32", "swc": "i32"}
    constants = dict(HAS_LENGTHS=True, DOT_PRECISION="ieee", UPCAST_DOT=False, BLOCK_B=layout.block_b,
                     BLOCK_H=layout.block_h, HIDDEN=layout.hidden, SINGLE_SLICE=layout.single_slice)  # fmt: skip
    kernels = {
        "fwd": (lstm._lstm_persistent_fwd_kernel, dict(SAVE=True)),
        "bwd": (lstm._lstm_persistent_bwd_kernel, {}),
    }
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    results = []
    for name, (kernel, extra) in kernels.items():
        consts = constants | extra
        signature = {arg: ("*i32" if arg in ("lengths_ptr", "counters_ptr") else "*fp32" if "carry" in arg else ptr)
                     for arg in kernel.arg_names if arg.endswith("_ptr")}  # fmt: skip
        signature |= common | {arg: "constexpr" for arg in consts}
        source = ASTSource(fn=kernel, signature=signature, constexprs=consts)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": layout.num_warps})
        with tempfile.TemporaryDirectory() as scratch:
            ptx = Path(scratch) / "kernel.ptx"
            ptx.write_text(compiled.asm["ptx"])
            info = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull],
                                  capture_output=True, text=True, check=True).stderr  # fmt: skip
        spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", info))
        results.append(dict(kernel=name, shared=compiled.metadata.shared, spill_bytes=spills))
    return results


@pytest.mark.parametrize("dtype_name,hidden_size", CASES, ids=str)
def test_persistent_kernels_fit_sm90(dtype_name, hidden_size):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, __file__, dtype_name, str(hidden_size)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for row in json.loads(done.stdout.strip().splitlines()[-1]):
        assert row["shared"] <= MAX_SHARED_BYTES, f"{row}: more shared memory than a block may have"
        assert row["spill_bytes"] <= MAX_SPILL_BYTES, f"{row}: register spills"


if __name__ == "__main__":
    print(json.dumps(_report(sys.argv[1], int(sys.argv[2]))))
