"""Command line: ``deepfuse demo | bench | profile`` (also ``python -m deepfuse ...``)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from deepfuse import demo

    result = demo.run(steps=args.steps, backend=args.backend)
    # The demo is also a check: the fused network must train like the torch one.
    if result["max_loss_gap"] > 1e-2 or result["losses"][-1] >= result["losses"][0]:
        print("demo FAILED: the fused network did not match or did not learn", file=sys.stderr)
        return 1
    return 0


BENCH_OPS = ("linear_act", "conv2d_act", "attention", "lstm")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _bench(args) -> int:
    import importlib

    import torch

    if args.op not in (*BENCH_OPS, "all"):
        print(f"unknown op {args.op!r}; available: {', '.join(BENCH_OPS)}, all", file=sys.stderr)
        return 2
    rows = []
    for op in BENCH_OPS if args.op == "all" else (args.op,):
        module = importlib.import_module(f"deepfuse.bench.{op}")
        rows += module.main(quick=args.quick, dtype=getattr(torch, DTYPES[args.dtype]), modes=args.modes.split(","),
                            out_dir=args.out)  # fmt: skip
    if args.compare:
        return _report_changes(rows, args.compare)
    return 0


def _report_changes(rows, previous_path) -> int:
    from deepfuse.bench.compare import compare_rows, load_rows

    previous = load_rows(previous_path)
    compared_ops = {row["op"] for row in previous}
    changes = [c for c in compare_rows(rows, previous) if c.key[0] in compared_ops]
    for change in changes:
        print(change)
    regressed = [c for c in changes if c.status == "REGRESSED"]
    print(f"compared with {previous_path}: {len(regressed)} regressed, "
          f"{sum(c.status == 'IMPROVED' for c in changes)} improved, {len(changes)} rows")  # fmt: skip
    return 1 if regressed else 0


def _profile(args) -> int:
    import importlib

    import torch

    import deepfuse

    if args.op not in BENCH_OPS:
        print(f"unknown op {args.op!r}; available: {', '.join(BENCH_OPS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"deepfuse.bench.{args.op}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[args.dtype]) if device.type == "cuda" else torch.float32
    case = module.cases(device, dtype, quick=True)[0]
    run = module.providers(device)["torch"] if args.op == "lstm" else getattr(deepfuse.ops, args.op)
    options = {"activation": module.ACTIVATION} if getattr(module, "ACTIVATION", None) else {}
    leaves = [t for t in case.inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def step():
        for t in leaves:
            t.grad = None
        with deepfuse.use_backend(args.backend):
            run(*case.inputs, **options).backward(case.grad_output)

    report = deepfuse.profile(step, steps=args.steps, trace=args.trace, out_dir=args.out)
    print(f"{args.op} {case.shape}, forward + backward, backend {args.backend or 'automatic'}")
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfuse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a small FusedLinear network and compare it with torch")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--backend", choices=["torch", "triton", "cuda"], default=None)
    demo.set_defaults(run=_demo)
    bench = commands.add_parser("bench", help="benchmark ops against eager torch and torch.compile")
    bench.add_argument("op", nargs="?", default="all")
    bench.add_argument("--quick", action="store_true", help="fewer shapes")
    bench.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    bench.add_argument("--modes", default="fwd,fwdbwd")
    bench.add_argument("--out", default="benchmarks/results")
    bench.add_argument("--compare", metavar="PREVIOUS.json", help="flag rows that regressed beyond the noise")
    bench.set_defaults(run=_bench)
    prof = commands.add_parser("profile", help="profile one op (forward + backward) and report per kernel")
    prof.add_argument("op")
    prof.add_argument("--steps", type=int, default=5)
    prof.add_argument("--backend", choices=["torch", "triton", "cuda"], default=None)
    prof.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    prof.add_argument("--trace", default=None, help="write a Chrome trace (chrome://tracing, Perfetto)")
    prof.add_argument("--out", default=None, help="folder for profile.md and the roofline PNG")
    prof.set_defaults(run=_profile)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
