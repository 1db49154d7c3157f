"""Synthesise a full-size aclImdb (25,000 train + 25,000 test reviews) from a small real sample, for timing the
sentiment models at the full set's shapes when the full set is not at hand.

Each synthetic review takes the word count of a real review drawn at random (the real length distribution), and
its words from the real reviews of its own class (word frequencies per class: the labels stay learnable), with
6 % of the words from a Zipf tail of rare words so that the vocabulary grows as the full corpus's does (~100k
distinct words). Layout and file names are aclImdb's: ``{train,test}/{pos,neg}/<id>_<rating>.txt``.

    python benchmarks/make_imdb_full.py /work/shared/realdata/imdb/aclImdb /tmp/imdb-full/aclImdb

Never write it into the repository: it is ~200 MB.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

WORD = re.compile(r"\w+|[^\w\s]")
RARE_FRACTION = 0.06


def read_sample(root: Path) -> tuple[dict[int, Counter], list[int]]:
    """Word counts per label (0 neg, 1 pos) and the word count of every real review."""
    words, lengths = {0: Counter(), 1: Counter()}, []
    for label, folder in ((0, "neg"), (1, "pos")):
        for path in sorted(root.glob(f"*/{folder}/*.txt")):
            tokens = WORD.findall(path.read_text(encoding="utf-8", errors="replace").replace("<br />", " "))
            words[label].update(tokens)
            lengths.append(len(tokens))
    if not lengths:
        sys.exit(f"make_imdb_full: {root} holds no {{train,test}}/{{pos,neg}}/*.txt reviews")
    return words, lengths


def synthesise(sample: Path, out: Path, per_folder: int, seed: int) -> None:
    words, real_lengths = read_sample(sample)
    vocabulary = np.array(sorted(set(words[0]) | set(words[1])), dtype=object)
    cumulative = {}
    for label in (0, 1):
        counts = np.array([words[label][w] + 0.5 for w in vocabulary])  # +0.5: every word in both classes
        cumulative[label] = np.cumsum(counts / counts.sum())
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for folder, label in (("neg", 0), ("pos", 1)):
            directory = out / split / folder
            directory.mkdir(parents=True, exist_ok=True)
            for index, count in enumerate(rng.choice(real_lengths, per_folder)):
                picks = np.searchsorted(cumulative[label], rng.random(count), side="right")
                tokens = vocabulary[np.minimum(picks, len(vocabulary) - 1)]
                rare = rng.random(count) < RARE_FRACTION
                tokens[rare] = [f"w{k}" for k in np.minimum(rng.zipf(1.3, rare.sum()), 200_000)]
                rating = rng.integers(7, 11) if label else rng.integers(1, 5)
                (directory / f"{index}_{rating}.txt").write_text(" ".join(tokens), encoding="utf-8")
    print(f"{out}: {4 * per_folder} reviews, lengths resampled from {len(real_lengths)} real ones")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sample", type=Path, help="a real aclImdb folder (any size)")
    parser.add_argument("out", type=Path, help="the new aclImdb folder (outside the repository)")
    parser.add_argument("--per-folder", type=int, default=12_500, help="reviews per split and class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    synthesise(args.sample, args.out, args.per_folder, args.seed)


if __name__ == "__main__":
    main()
