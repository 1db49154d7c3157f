"""Command line: ``deepfuse demo | train | eval | predict | bench | profile`` (also ``python -m deepfuse ...``).

The CLI only parses and calls: models come from ``deepfuse.models``, training from ``deepfuse.training``.
A user mistake (a missing file, an unknown model, a checkpoint of another model, ``--device cuda`` without a
GPU) prints one line on stderr and exits with 2; a bug shows its traceback.

torch and deepfuse are imported inside the functions (each such import marked "start-up"): ``main`` first decides
whether Triton's interpreter is on (``--backend triton`` on a CPU), which must happen before triton is imported
(importing deepfuse imports it), or the process has to start again.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

BENCH_OPS = ("linear_act", "conv2d_act", "attention", "lstm")
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
BACKENDS = ["auto", "torch", "triton", "cuda"]
EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


class UserError(Exception):
    """Reported as one line, without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    # start-up (see the module's note)
    from deepfuse.backend import BackendUnavailableError
    from deepfuse.data import DataError
    from deepfuse.training.checkpoint import CheckpointError
    from deepfuse.training.engine import RunError

    return UserError, DataError, CheckpointError, RunError, BackendUnavailableError


def _task(name: str):
    # start-up (see the module's note)
    from deepfuse import models

    try:
        return models.get(name)
    except ValueError as error:
        raise UserError(str(error)) from None


def _interpret_triton_on_cpu(argv: list[str]) -> None:
    """``--backend triton`` on the CPU runs the kernels through Triton's interpreter, which must be switched on
    before triton is imported (importing deepfuse imports torch's triton support): when it is not, this process
    is started again with TRITON_INTERPRET=1."""
    backend = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--backend"), None)
    backend = backend or next((a.split("=", 1)[1] for a in argv if a.startswith("--backend=")), None)
    device = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"), None)
    if backend != "triton" or device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return
    # start-up (see the module's note)
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        if "triton" in sys.modules:
            os.execv(sys.executable, [sys.executable, "-m", "deepfuse", *argv])


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"deepfuse: warning: {message}\n"


# --- demo --------------------------------------------------------------------------------------------------
def _demo(args) -> int:
    # start-up (see the module's note)
    from deepfuse.demo import run

    result = run(epochs=args.epochs, out=args.out, backend=args.backend)
    return 0 if result["accuracy"] >= result["target"] else 1


# --- train / eval / predict --------------------------------------------------------------------------------
def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="the dataset's folder or file, in its published layout (see the README)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process (torchrun: per GPU)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when present")
    parser.add_argument("--backend", choices=BACKENDS, help="default: auto")
    parser.add_argument(
        "--amp",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="mixed precision (autocast; on a CPU fp16 is slow); auto: bf16 on a CPU with native bf16, else fp32",
    )
    # None when not given (not False): a resumed run tells a flag the user gave from one left out
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        default=None,
        help="replay each training and evaluation step as CUDA graphs (torch.compile, reduce-overhead "
        "mode); GPU only, refused for models that read data-dependent sizes",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--deterministic", action="store_true", default=None, help="torch's deterministic algorithms")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--out", help="run folder (default runs/MODEL/TIMESTAMP)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="stop when the validation metric has not improved for N epochs (default: off, or the "
        "model's own); best.pt is then tested",
    )
    parser.add_argument(
        "--max-grad-norm",
        type=float,
        metavar="N",
        help="clip the gradients' total norm to N before each optimizer step (default: off, or the model's own)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _add_task_options(parser: argparse.ArgumentParser, task) -> None:
    for name, option in task.options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(option.default, bool):
            parser.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{option.help} (default {option.default})",
            )
        else:
            kind = type(option.default) if option.default is not None else str
            parser.add_argument(
                flag,
                dest=name,
                type=kind,
                choices=option.choices,
                default=None,
                help=f"{option.help} (default {option.default})",
            )


def _model_name(argv: list[str], command: str) -> str | None:
    """The MODEL positional of ``deepfuse <command> MODEL ...`` (read before the model's options are known)."""
    rest = argv[argv.index(command) + 1 :] if command in argv else []
    return next((a for a in rest if not a.startswith("-")), None)


def _train(args) -> int:
    # start-up (see the module's note)
    from deepfuse.training import make_config, train

    task = _task(args.model)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "run", "model", "resume")}
    config = make_config(task, **overrides)
    try:
        train(task, config, resume=args.resume, given={k for k, v in overrides.items() if v is not None})
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


def _eval(args) -> int:
    # start-up (see the module's note)
    from deepfuse.training import evaluate_checkpoint

    try:
        evaluate_checkpoint(
            _task(args.model), args.checkpoint, data=args.data, device=args.device, backend=args.backend
        )
    except KeyboardInterrupt:
        print("deepfuse eval: interrupted (nothing is written by eval)", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _predict(args) -> int:
    # start-up (see the module's note)
    from deepfuse.training import predict_with_checkpoint

    options = {"skip_bad": True} if getattr(args, "skip_bad", None) else {}
    for line in predict_with_checkpoint(
        _task(args.model),
        args.checkpoint,
        args.inputs,
        device=args.device,
        out=args.out,
        backend=args.backend,
        options=options,
    ):
        print(line)
    return 0


# --- bench / profile ---------------------------------------------------------------------------------------
def _bench(args) -> int:
    # start-up (see the module's note)
    import torch

    # start-up (see the module's note)
    from deepfuse import models

    if args.op == "drive":
        # start-up (see the module's note)
        from deepfuse.bench.simulator import main as bench_drive

        bench_drive(out_dir=args.out, quick=args.quick)
        return 0
    if args.op == "models" or args.op in models.names():
        # start-up (see the module's note)
        from deepfuse.bench.models import main as bench_models

        names = models.names() if args.op == "models" else [args.op]
        for name, package in models.unavailable().items():
            print(f"skipped model file {name}.py: needs {package}, not installed here")
        try:
            bench_models(
                names, quick=args.quick, modes=args.modes.split(","), out_dir=args.out, cuda_graphs=args.cuda_graphs
            )
        except ValueError as error:
            if not str(error).startswith("--cuda-graphs"):
                raise
            raise UserError(str(error)) from None
        return 0
    if args.op == "overhead":
        # start-up (see the module's note)
        from deepfuse.bench.overhead import main as bench_overhead

        bench_overhead(quick=args.quick, modes=args.modes.split(","), out_dir=args.out)
        return 0
    if args.op not in (*BENCH_OPS, "all"):
        raise UserError(
            f"unknown op or model {args.op!r}; ops: {', '.join(BENCH_OPS)}, all, overhead; "
            f"models: {', '.join(models.names())}, models"
        )
    rows = []
    for op in BENCH_OPS if args.op == "all" else (args.op,):
        module = importlib.import_module(f"deepfuse.bench.{op}")
        rows += module.main(
            quick=args.quick, dtype=getattr(torch, DTYPES[args.dtype]), modes=args.modes.split(","), out_dir=args.out
        )
    if args.compare:
        return _report_changes(rows, args.compare)
    return 0


def _report_changes(rows, previous_path) -> int:
    # start-up (see the module's note)
    from deepfuse.bench.compare import compare_rows, load_rows

    previous = load_rows(previous_path)
    compared_ops = {row["op"] for row in previous}
    changes = [c for c in compare_rows(rows, previous) if c.key[0] in compared_ops]
    for change in changes:
        print(change)
    regressed = [c for c in changes if c.status == "REGRESSED"]
    print(
        f"compared with {previous_path}: {len(regressed)} regressed, "
        f"{sum(c.status == 'IMPROVED' for c in changes)} improved, {len(changes)} rows"
    )
    return 1 if regressed else 0


def _profile(args) -> int:
    # start-up (see the module's note)
    from deepfuse import models

    if args.op in models.names():
        return _profile_model(args)
    if args.op not in BENCH_OPS:
        raise UserError(
            f"unknown op or model {args.op!r}; ops: {', '.join(BENCH_OPS)}; models: {', '.join(models.names())}"
        )
    return _profile_op(args)


def _profile_op(args) -> int:
    # start-up (see the module's note)
    import torch

    # start-up (see the module's note)
    import deepfuse

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


def _profile_model(args) -> int:
    # start-up (see the module's note)
    import torch

    # start-up (see the module's note)
    import deepfuse
    from deepfuse.bench.models import model_case

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task, model, case, batch = model_case(args.op, device, quick=True)
    inputs, targets = case.inputs[:-1], case.inputs[-1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" and args.dtype == "bf16" else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        with deepfuse.use_backend(args.backend):
            if amp is None:
                loss = task.loss(model(*inputs), targets)
            else:
                with amp:
                    loss = task.loss(model(*inputs), targets)
            loss.backward()
        optimizer.step()

    model.train()
    report = deepfuse.profile(step, steps=args.steps, trace=args.trace, out_dir=args.out)
    print(
        f"model {args.op}, one training step (forward, backward, AdamW) on a batch of {batch}, "
        f"backend {args.backend or 'automatic'}"
    )
    print(report)
    return 0


# --- the parser ---------------------------------------------------------------------------------------------
def _parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepfuse", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the digits CNN on the built-in data (the main job)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--out", default=None, help="run folder (default runs/demo/TIMESTAMP)")
    demo.add_argument("--backend", choices=BACKENDS, default=None, help="default: auto")
    demo.set_defaults(run=_demo)
    _add_model_commands(commands, argv)
    _add_measuring_commands(commands)
    _add_drive_commands(commands)
    return parser


def _add_model_commands(commands, argv: list[str]) -> None:
    """train, eval, predict; a named model's own options join train's (and predict's --skip-bad)."""
    # start-up (see the module's note)
    from deepfuse import models

    train = commands.add_parser("train", help="train a model; writes checkpoints, metrics.json, history.csv, PNGs")
    train.add_argument("model", metavar="MODEL", help=f"one of: {', '.join(models.names())}")
    _add_run_options(train)
    name = _model_name(argv, "train")
    if name in models.names():
        _add_task_options(train.add_argument_group(f"{name} options"), models.get(name))
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on the test split")
    evaluate.add_argument("model", metavar="MODEL")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--data", help="the dataset (default: the checkpoint's)")
    evaluate.add_argument("--device", choices=["cpu", "cuda"])
    evaluate.add_argument("--backend", choices=BACKENDS, default="auto")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser("predict", help="predict for input files (or texts) with a checkpoint")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("inputs", metavar="INPUT", nargs="+")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("--device", choices=["cpu", "cuda"])
    predict.add_argument("--backend", choices=BACKENDS, default="auto")
    predict.add_argument("--out", default=None, help="folder for files predict writes (default: here)")
    name = _model_name(argv, "predict")
    if name in models.names() and "skip_bad" in models.get(name).options:  # what the image checks suggest
        predict.add_argument("--skip-bad", action="store_true", help="skip unreadable input images (one warning)")
    predict.set_defaults(run=_predict)


def _add_measuring_commands(commands) -> None:
    """bench and profile."""
    bench = commands.add_parser("bench", help="benchmark ops or models against eager torch and torch.compile")
    bench.add_argument(
        "op",
        nargs="?",
        default="all",
        help="an op, all, overhead (µs per call vs torch), a model name, models, or drive (simulator steps/s)",
    )
    bench.add_argument("--quick", action="store_true", help="fewer shapes")
    bench.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    bench.add_argument("--modes", default="fwd,fwdbwd")
    bench.add_argument("--out", default="benchmarks/results")
    bench.add_argument("--compare", metavar="PREVIOUS.json", help="flag rows that regressed beyond the noise")
    bench.add_argument(
        "--cuda-graphs", action="store_true", help="models: also time every provider replayed as CUDA graphs (GPU only)"
    )
    bench.set_defaults(run=_bench)

    prof = commands.add_parser("profile", help="per-kernel profile of an op (fwd+bwd) or a model's training step")
    prof.add_argument("op", metavar="OP_OR_MODEL")
    prof.add_argument("--steps", type=int, default=5)
    prof.add_argument("--backend", choices=BACKENDS, default=None, help="default: auto")
    prof.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    prof.add_argument("--trace", default=None, help="write a Chrome trace (chrome://tracing, Perfetto)")
    prof.add_argument("--out", default=None, help="folder for profile.md and the roofline PNG")
    prof.set_defaults(run=_profile)


def _add_drive_commands(commands) -> None:
    """drive record | play, or a drive command that names the simulator's missing package."""
    try:
        # start-up (see the module's note)
        from deepfuse.drive_cli import add_drive_commands
    except ModuleNotFoundError as error:  # the simulator needs gymnasium (and numba); say so when asked for it
        if error.name is None or error.name.startswith("deepfuse"):
            raise
        drive = commands.add_parser("drive", help=f"the driving simulator (needs {error.name}: not installed)")
        drive.set_defaults(run=_missing_package(error.name))
    else:
        add_drive_commands(commands)


def _missing_package(package: str):
    def run(args) -> int:
        raise UserError(f"needs the package {package!r}, which is not installed here (pip install 'deepfuse[models]')")

    return run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    _interpret_triton_on_cpu(argv)
    args = _parser(argv).parse_args(argv)
    previous_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return args.run(args)
    except _user_errors() as error:
        print(f"deepfuse {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":
    sys.exit(main())
