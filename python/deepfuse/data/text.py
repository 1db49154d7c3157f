"""A word-level vocabulary (Hugging Face ``tokenizers``, trained offline) and the batching of token sequences.

Tokenizing: Unicode NFKC, lower case, then words and runs of punctuation (``\\w+|[^\\w\\s]+``; Unicode white space,
U+0085 included, separates words). The vocabulary is the ``vocab_size`` most frequent tokens of the texts it is
fitted on — the training split only — plus ``[PAD]`` (id 0) and ``[UNK]`` (id 1). It serialises to one JSON
string (``to_json``), which a model keeps in its checkpoint so that eval and predict use the very same ids.
Encoding tokenizes only a prefix of each text that surely holds the ``max_len`` tokens kept (the whole text when
the prefix falls short), in chunks, with an optional progress bar.

Batches: ``collate_padded`` turns ``(ids, label)`` items into ``((ids padded with [PAD], lengths), labels)``;
models pack them (PackedSequence, or packed tokens with ``cu_seqlens``) so no work is spent on the padding.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from torch.utils.data import Dataset

PAD, UNK = "[PAD]", "[UNK]"
# NOTE: tokenizing is the cost of encoding (~1 ms per 230-word review on a busy CPU core, 2026-12); reviews past
# max_len tokens are cut first to max_len * 8 characters (IMDb averages ~4.5 characters per token, spaces included)
PREFIX_CHARACTERS_PER_TOKEN = 8
ENCODE_CHUNK = 2048


class Vocabulary:
    """Text → token ids with a fitted word-level tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.token_to_id(PAD)
        self.unk_id = tokenizer.token_to_id(UNK)
        if self.pad_id is None or self.unk_id is None:
            raise ValueError(f"the tokenizer has no {PAD} or {UNK} token: not a deepfuse vocabulary")

    @classmethod
    def fit(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 1) -> Vocabulary:
        """The ``vocab_size`` (specials included) most frequent tokens of ``texts``."""
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3 ([PAD], [UNK] and one word), got {vocab_size}")
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[PAD, UNK], show_progress=False
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str], max_len: int, progress: bool = False) -> list[list[int]]:
        """Token ids of each text, the first ``max_len`` kept; a text without a single token becomes ``[UNK]``
        (a sequence of length 0 cannot be packed). ``progress``: a progress bar on stderr."""
        from tqdm.auto import tqdm

        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        limit = max_len * PREFIX_CHARACTERS_PER_TOKEN
        ids = []
        with tqdm(
            total=len(texts),
            desc="encoding",
            unit=" texts",
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not progress,
        ) as bar:
            for start in range(0, len(texts), ENCODE_CHUNK):
                chunk = texts[start : start + ENCODE_CHUNK]
                encoded = self.tokenizer.encode_batch_fast([text[:limit] for text in chunk])
                for text, encoding in zip(chunk, encoded, strict=True):
                    kept = encoding.ids
                    # a cut changes at most the prefix's last token (and what normalising it joins): with two
                    # tokens to spare the first max_len are the whole text's; otherwise tokenize the whole text
                    if len(text) > limit and len(kept) < max_len + 2:
                        kept = self.tokenizer.encode(text).ids
                    ids.append(kept[:max_len] or [self.unk_id])
                bar.update(len(chunk))
        return ids

    def tokens(self, text: str) -> list[str]:
        return self.tokenizer.encode(text).tokens


class TokenDataset(Dataset):
    """Items ``(ids (L,) int64, label ())``; ``lengths`` for length-bucketed batches. ``extra`` carries split-level
    results computed beside the data (a baseline's metrics)."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} sequences but {len(labels)} labels")
        self.ids = [torch.tensor(s, dtype=torch.int64) for s in ids]
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.lengths = [len(s) for s in self.ids]
        self.extra: dict = {}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[index], self.labels[index]


def collate_padded(items: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0):
    """``[(ids (L_i,), label), ...]`` → ``((ids (B, max L_i) padded with pad_id, lengths (B,) int64), labels)``."""
    lengths = torch.tensor([len(ids) for ids, _ in items], dtype=torch.int64)
    padded = torch.full((len(items), int(lengths.max()) if len(items) else 0), pad_id, dtype=torch.int64)
    for row, (ids, _) in enumerate(items):
        padded[row, : len(ids)] = ids
    return (padded, lengths), torch.stack([label for _, label in items])
