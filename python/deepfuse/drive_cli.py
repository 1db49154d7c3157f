"""``deepfuse drive record | play``: record the expert in Udacity's format; watch a checkpoint (or the expert)
drive. Added to deepfuse's command line by ``add_drive_commands``. Importing this module imports the simulator's
package (gymnasium, numba: optional, ``deepfuse[drive]``), so that ``cli.py`` can say which one is missing; the
recorder and the player (numba) are imported by the commands that use them (the CLI's start-up time)."""

from __future__ import annotations

import argparse
from pathlib import Path

import deepfuse.envs  # noqa: F401  (the simulator's optional packages: a missing one raises here, for cli.py)
from deepfuse import models  # the command line's parser has imported the registry already
from deepfuse.training.checkpoint import CheckpointError, load_checkpoint
from deepfuse.training.engine import RunError, load_for_inference


def add_drive_commands(commands) -> None:
    """Add ``drive`` (with ``record`` and ``play``) to an argparse subparsers object."""
    drive = commands.add_parser("drive", help="the driving simulator: record expert logs, play a checkpoint")
    actions = drive.add_subparsers(dest="drive_command", required=True)

    record = actions.add_parser("record", help="the expert drives; write driving_log.csv and IMG/ (Udacity format)")
    record.add_argument("--out", required=True, help="folder to write (driving_log.csv and IMG/)")
    record.add_argument("--steps", type=int, default=1000, help="frames (rows) to record, 10 per simulated second")
    record.add_argument("--seed", type=int, default=0)
    record.add_argument("--tracks", type=int, default=8, help="training tracks the expert drives on")
    record.add_argument(
        "--style",
        choices=["road", "narrow", "mixed"],
        default="road",
        help="tracks: 7-9 m roads, 4-5 m roads with the sharpest bends, or alternately",
    )
    record.add_argument(
        "--keyboard",
        type=float,
        default=0.0,
        metavar="STEP",
        help="record keyboard-like steering: taps of multiples of STEP, mostly exact zeros (0: off)",
    )
    record.set_defaults(run=_record)

    play = actions.add_parser("play", help="drive one unseen track; write a GIF and/or a PNG strip")
    play.add_argument("--checkpoint", help="a driving or driving-rl checkpoint (default: the expert drives)")
    play.add_argument("--gif", help="animated GIF to write")
    play.add_argument("--png", help="PNG strip of evenly spaced frames to write")
    play.add_argument("--steps", type=int, default=300)
    play.add_argument("--track", type=int, default=0, help="which track of the split")
    play.add_argument("--split", choices=["train", "val", "test"], default="test")
    play.add_argument("--style", choices=["road", "narrow"], default="road", help="narrow: the closed loop's tracks")
    play.add_argument("--every", type=int, default=2, help="keep every N-th frame")
    play.add_argument("--device", choices=["cpu", "cuda"])
    play.set_defaults(run=_play)


def _record(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise RunError(f"--steps must be >= 1, got {args.steps}")
    if args.tracks < 1:
        raise RunError(f"--tracks must be >= 1, got {args.tracks}")
    if not 0.0 <= args.keyboard <= 1.0:
        raise RunError(f"--keyboard must be a steering step in [0, 1] (0: off), got {args.keyboard}")
    out = Path(args.out)
    if (out / "driving_log.csv").exists():
        raise RunError(f"--out {out} already holds a driving_log.csv (nothing was overwritten)")
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder")
    from deepfuse.envs.recorder import record  # CLI start-up time (numba compiles on first use)

    log = record(out, args.steps, args.seed, tracks=args.tracks, style=args.style, keyboard=args.keyboard)
    print(f"recorded {args.steps} frames ({args.steps / 10:.0f} s of driving) to {log} and {out / 'IMG'}")
    return 0


def _play(args: argparse.Namespace) -> int:
    if not args.gif and not args.png:
        raise RunError("give --gif FILE and/or --png FILE")
    if args.steps < 1 or args.every < 1 or args.track < 0:
        raise RunError("--steps and --every must be >= 1, --track >= 0")
    if args.checkpoint is None:
        from deepfuse.envs.closed_loop import expert_pilot  # CLI start-up time

        pilot = expert_pilot()
    else:
        pilot = _pilot_from_checkpoint(args.checkpoint, args.device)
    from deepfuse.envs.player import play  # CLI start-up time

    metrics = play(
        pilot,
        split=args.split,
        track=args.track,
        steps=args.steps,
        gif=args.gif,
        png=args.png,
        every=args.every,
        style=args.style,
    )
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    written = " and ".join(filter(None, (args.gif, args.png)))
    print(f"{pilot.name} on {args.split} track {args.track} ({args.style}): {shown}; wrote {written}")
    return 0


def _pilot_from_checkpoint(path: str, device: str | None):
    name = load_checkpoint(path)["model"]
    task = models.get(name)
    if not hasattr(task, "pilot"):
        raise CheckpointError(f"{path}: a checkpoint of {name!r}, which cannot drive (use driving or driving-rl)")
    model, _, state = load_for_inference(task, path, device)
    return task.pilot(model, state)
