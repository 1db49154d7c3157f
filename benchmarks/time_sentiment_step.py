"""Time the sentiment Transformer's training step alone (forward, loss, backward, AdamW) on batches shaped like the
full IMDb's at --max-len 256, with whatever deepfuse is on the path (``PYTHONPATH=<an older worktree>/python``
times that commit). Starts in seconds, so that commits can be alternated many times on a shared machine.

The batches: review lengths drawn from a real aclImdb sample (word and punctuation counts, cut at ``--max-len``),
sorted and cut into batches of 64 as the length-bucketed sampler makes them; random token ids. The step's wall
time and the process's CPU time (with one thread: the step's time on an idle core, hardly touched by other
processes) are reported as medians over every batch and pass. One JSON line goes to stdout.

    OMP_NUM_THREADS=1 python benchmarks/time_sentiment_step.py /work/shared/realdata/imdb/aclImdb --amp bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_imdb_full import read_sample  # noqa: E402  (a sibling script, not a package)

import deepfuse  # noqa: E402
from deepfuse import models  # noqa: E402


def bucketed_batches(sample: Path, batches: int, batch_size: int, max_len: int, vocab: int, seed: int):
    """``batches`` (ids, lengths, targets) of similar lengths, the lengths drawn from the real reviews."""
    _, real_lengths = read_sample(sample)
    rng = np.random.default_rng(seed)
    lengths = np.sort(np.minimum(rng.choice(real_lengths, batches * batch_size), max_len))
    generator = torch.Generator().manual_seed(seed)
    out = []
    for part in np.split(lengths, batches):
        lengths_t = torch.as_tensor(part, dtype=torch.int64)
        width = int(lengths_t.max())
        ids = torch.randint(2, vocab, (batch_size, width), generator=generator)
        ids = ids.masked_fill(torch.arange(width)[None] >= lengths_t[:, None], 0)
        out.append((ids, lengths_t, torch.randint(0, 2, (batch_size,), generator=generator)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sample", type=Path, help="a real aclImdb folder (the lengths are drawn from it)")
    parser.add_argument("--amp", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--passes", type=int, default=2, help="timed passes over the batches (after one warm-up)")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=20000)
    args = parser.parse_args()

    task = models.get("sentiment-transformer")
    state = {"tokenizer": None, "vocab_size": args.vocab_size, "pad_id": 0, "classes": ["negative", "positive"]}
    batches = bucketed_batches(args.sample, args.batches, 64, args.max_len, args.vocab_size, seed=0)
    torch.manual_seed(0)
    model = task.build({"max_len": args.max_len, "vocab_size": args.vocab_size}, state).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-2)

    def step(ids, lengths, targets) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            loss = task.loss(model(ids, lengths), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches:  # warm-up
        step(*batch)
    wall, cpu = [], []
    for _ in range(args.passes):
        for batch in batches:
            started, cpu_started = time.perf_counter(), time.process_time()
            step(*batch)
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
    reviews = 64 * len(batches)
    result = {
        "deepfuse": str(Path(deepfuse.__file__).parent),
        "amp": args.amp,
        "threads": torch.get_num_threads(),
        "tokens_per_batch": round(sum(int(b[1].sum()) for b in batches) / len(batches)),
        "wall_ms_median": round(1000 * statistics.median(wall), 1),
        "cpu_ms_median": round(1000 * statistics.median(cpu), 1),
        "reviews_per_s": round(reviews * args.passes / sum(wall), 1),
        "reviews_per_cpu_s": round(reviews * args.passes / sum(cpu), 1),
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
