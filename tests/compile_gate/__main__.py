"""python -m tests.compile_gate [--jobs N] [--full] [--only TEXT] [--no-cache]: the compile gate; exit status 1 on
any failure.

Runs without TRITON_INTERPRET (re-executing itself without it when set), since interpreted kernels cannot be
compiled. See tests/compile_gate/gate.py for what is checked.
"""

import argparse
import os
import sys

if os.environ.get("TRITON_INTERPRET", "0") == "1":  # e.g. started from a test session: run without it
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    os.execve(sys.executable, [sys.executable, "-m", "tests.compile_gate", *sys.argv[1:]], env)

parser = argparse.ArgumentParser(prog="python -m tests.compile_gate", description=__doc__.splitlines()[0])
# NOTE: 2 by default: CI runs the gate beside the CPU tests on a 2-core machine; the OS shares the cores while both
# run, and the gate has both once the tests finish (about 4 minutes before it).
parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
parser.add_argument(
    "--full", action="store_true", help="compile every distinct launch, not the cover of configs and specialisations"
)
parser.add_argument(
    "--only", help="only the cases whose '<op> <case name>' contains this text (skips the unreached-kernel check)"
)
parser.add_argument("--verbose", action="store_true", help="full compiler messages")
parser.add_argument(
    "--no-cache",
    action="store_true",
    help="compile everything, neither reading nor writing ~/.cache/deepfuse/compile_gate (DEEPFUSE_COMPILE_GATE_CACHE)",
)
args = parser.parse_args()

import shutil  # noqa: E402
import tempfile  # noqa: E402

# Every compile is cold (the gate needs ptxas' report, which a Triton cache hit skips): keep the user's Triton cache
# clean. The gate's own cache (compile.ResultCache) stores the results it checks, keyed by source and launch.
scratch = None
if "TRITON_CACHE_DIR" not in os.environ:
    scratch = os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="deepfuse-compile-gate-")

from tests.compile_gate.compile import ResultCache  # noqa: E402 - after the environment is set
from tests.compile_gate.gate import run  # noqa: E402

try:
    failures = run(
        jobs=args.jobs,
        full=args.full,
        only=args.only,
        verbose=args.verbose,
        cache=None if args.no_cache else ResultCache(),
    )
finally:
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
sys.exit(1 if failures else 0)
