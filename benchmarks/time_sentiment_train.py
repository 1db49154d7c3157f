"""Time `deepfuse train MODEL ...` itself for a bounded number of optimizer steps: time to the first step (from
this process's start: imports, reading, vocabulary, encoding, building, the first step) and the steady training
throughput (reviews/s and tokens/s over ``--steps`` steps after ``--warmup``), then stop the run.

Whatever deepfuse is on the path is timed (``PYTHONPATH=<an older worktree>/python`` times that commit), through
its own command line: the arguments after ``--`` are ``deepfuse train``'s. One JSON line goes to stdout.

Wall time is what a user waits; on a shared machine it also counts the other processes. The process's CPU time
per step (``cpu_ms_per_step``, all its threads) hardly depends on them: with one thread it is the step's time on
an idle core, the number to compare across runs made under different loads.

    OMP_NUM_THREADS=1 python benchmarks/time_sentiment_train.py --steps 30 --warmup 5 -- \\
        sentiment-transformer --data /tmp/imdb-full/aclImdb --max-len 256 --device cpu --no-progress --out /tmp/r
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

START = time.perf_counter()  # before torch and deepfuse are imported (main imports them)


class StepClock:
    """Optimizer-step times, and the real and padded tokens of each collated batch."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []  # process CPU time (all threads) at each step
        self.batches: list[tuple[int, int, int]] = []  # (reviews, real tokens, padded tokens)

    def collated(self, batch) -> None:
        (ids, lengths), _ = batch
        self.batches.append((len(lengths), int(lengths.sum()), ids.numel()))

    def stepped(self) -> bool:
        """Record a finished optimizer step; True once enough have been timed."""
        self.stamps.append(time.perf_counter())
        self.cpu_stamps.append(time.process_time())
        return len(self.stamps) > self.warmup + self.steps

    def result(self) -> dict:
        timed = slice(self.warmup + 1, self.warmup + 1 + self.steps)  # step k's batch is batches[k - 1]
        seconds = self.stamps[self.warmup + self.steps] - self.stamps[self.warmup]
        cpu_seconds = self.cpu_stamps[self.warmup + self.steps] - self.cpu_stamps[self.warmup]
        reviews, real, padded = (sum(b[i] for b in self.batches[timed]) for i in range(3))
        steps = [b - a for a, b in zip(self.stamps[self.warmup :], self.stamps[self.warmup + 1 :], strict=False)]
        return {
            "first_step_s": round(self.stamps[0] - START, 2),
            "timed_steps": self.steps,
            "ms_per_step": round(1000 * seconds / self.steps, 1),
            "ms_per_step_median": round(1000 * sorted(steps)[len(steps) // 2], 1),
            "reviews_per_s": round(reviews / seconds, 1),
            "tokens_per_s": round(real / seconds),
            "cpu_ms_per_step": round(1000 * cpu_seconds / self.steps, 1),
            "reviews_per_cpu_s": round(reviews / cpu_seconds, 1),
            "load_average": os.getloadavg()[0],
            "padding_fraction": round(1 - real / padded, 4),
        }


def commit_of(module_file: str) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(module_file).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps timed")
    parser.add_argument("--warmup", type=int, default=5, help="steps after the first one, not timed")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then deepfuse train's arguments")
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if not train_args:
        parser.error("give deepfuse train's arguments after --")

    import torch

    import deepfuse
    from deepfuse import cli
    from deepfuse.models import sentiment
    from deepfuse.training import engine

    clock = StepClock(args.warmup, args.steps)
    collate = sentiment.collate_padded

    def counting_collate(items, pad_id=0):
        batch = collate(items, pad_id)
        clock.collated(batch)
        return batch

    sentiment.collate_padded = counting_collate  # load_data binds it into the run's collate
    after_step = engine.Run.after_step

    def timed_after_step(run) -> None:
        after_step(run)
        if clock.stepped():
            line = {
                "commit": commit_of(deepfuse.__file__),
                "threads": torch.get_num_threads(),
                "amp": run.config.get("amp"),
                "command": "deepfuse train " + " ".join(train_args),
                **clock.result(),
            }
            print(json.dumps(line), flush=True)
            os._exit(0)  # the run is cut here on purpose: no checkpoint, no evaluation

    engine.Run.after_step = timed_after_step
    code = cli.main(["train", *train_args])
    print(f"time_sentiment_train: the run ended after {len(clock.stamps)} steps, too few to time", file=sys.stderr)
    return code or 1


if __name__ == "__main__":
    sys.exit(main())
