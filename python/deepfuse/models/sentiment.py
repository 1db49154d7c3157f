"""IMDb review sentiment, two networks on one data pipeline: ``sentiment-lstm`` and ``sentiment-transformer``.

Data: IMDb's published layout (``deepfuse.data.imdb``), a word-level vocabulary fitted on the training split
(``deepfuse.data.text``, kept in the checkpoint), reviews cut to ``max_len`` tokens, batches of similar lengths.

Variable lengths without work on padding:
- ``sentiment-lstm``: embedding → bidirectional ``deepfuse.nn.LSTM`` over a PackedSequence (each sequence stops at
  its own length) → mean and max over each review's outputs → ``FusedLinear`` → 2 logits.
- ``sentiment-transformer``: the batch's real tokens are packed one review after another, ``cu_seqlens`` marking
  where each starts, and every layer runs on the packed tokens (``TransformerEncoderLayer.forward_packed``): the QKV
  projection, ``deepfuse.ops.attention_varlen`` (no padded keys or queries), the output projection and the
  feed-forward block (``FusedLinear``), pre-LN. With a
  key-padding mask instead, the projections and the feed-forward would also run on the padding rows and the flash
  kernel would still load the masked key tiles; with packing nothing runs on padding. The layers are
  ``deepfuse.nn.TransformerEncoderLayer``s (nn.TransformerEncoderLayer's state_dict): ``forward_padded`` runs them
  the padded way, with ``src_key_padding_mask``, and the tests check both give the same outputs. Mean over each
  review's tokens → ``FusedLinear`` → 2 logits. Attention-probability dropout is off (the flash kernels have none);
  dropout acts on the embeddings, the residual branches and the feed-forward block (on a CPU with masks of 16
  random bits per element, ``CheapMaskDropout``: torch's ``bernoulli_`` was 16 % of the training step).

Beside each model's metrics, a TF-IDF (words and word pairs) + logistic-regression baseline trained on the same
training split reports ``baseline_accuracy`` (about 0.88-0.90 on the full IMDb in the literature): one fit, with
a fixed C (``BASELINE_C``; choosing it among three on validation tripled the fits), and its metrics are cached per
dataset (``cached_tfidf_baseline``: keyed by every review file's path, size and modification time, under
``$DEEPFUSE_CACHE_DIR`` or ``~/.cache/deepfuse``), so only a dataset's first run pays for it, and then at the first
validation, not before the first training step (``BaselineOnDemand``). Reading, the
vocabulary, encoding and the baseline each show a progress bar (``--no-progress`` hides them). Empty reviews
are skipped with a warning (``deepfuse.data.imdb``); ``predict`` refuses an empty text.

Targets on the full 25k/25k set (GPU, from scratch): both variants >= 0.89 test accuracy — untested until run on the
full set (published small models: BiLSTM 0.84, a one-block Transformer 0.87).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from deepfuse.data import DataError, imdb
from deepfuse.data.imdb import clean, read_review
from deepfuse.data.text import TokenDataset, Vocabulary, collate_padded
from deepfuse.nn import LSTM, FusedLinear, TransformerEncoderLayer
from deepfuse.training.metrics import binary_metrics, positive_probability
from deepfuse.training.plots import roc_curve_png
from deepfuse.training.task import Data, Option, Task

CLASSES = ["negative", "positive"]


def _valid(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) bool: True at each sequence's real tokens."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class LSTMClassifier(nn.Module):
    def __init__(
        self, vocab: int, embed_dim: int, hidden: int, layers: int, bidirectional: bool, dropout: float, pad_id: int = 0
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim, padding_idx=pad_id)
        self.lstm = LSTM(
            embed_dim,
            hidden,
            num_layers=layers,
            bidirectional=bidirectional,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = FusedLinear(2 * hidden * (2 if bidirectional else 1), 2)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.embedding(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)  # zeros past each length
        lengths = lengths.to(out.device)
        mean = out.sum(1) / lengths[:, None].to(out.dtype)
        peak = out.masked_fill(~_valid(lengths, out.shape[1])[..., None], float("-inf")).amax(1)
        return self.classifier(self.dropout(torch.cat([mean, peak], -1)))


class CheapMaskDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks come from 16 random bits per element (four per 64-bit draw of torch's
    generator) compared with a threshold: the drop probability is ``p`` rounded to a multiple of 1/65536, and the
    kept elements are scaled by the exact inverse of the keep probability, so the output's mean is the input's.
    On other devices it is ``nn.Dropout`` (a fused kernel there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        dropped = round(self.p * 65536)
        if dropped >= 65536:
            return x * 0.0
        # NOTE: torch's CPU bernoulli_ draws ~4-5 ns per element, the 64-bit draws here ~0.6: on 12,390 x 256
        # elements forward + backward 18.5 -> 6.4 ms (fp32), 16.0 -> 5.3 ms (bf16); the Transformer's bf16 training
        # step at the full IMDb's shapes 416 -> 367 ms CPU (one thread), 257 -> 206 ms wall (two), 2 vCPUs of a
        # Zen 5 (benchmarks/results/cpu/2026-12-05-sentiment-transformer-train-2.md)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - 32768
        # bool -> uint8 -> float: torch's uint8 cast is vectorised, its bool cast is not (1.4 ms vs 0.2 ms here)
        return x * keep.view(torch.uint8).to(x.dtype).mul_(65536 / (65536 - dropped))


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        vocab: int,
        d_model: int,
        heads: int,
        ffn_dim: int,
        layers: int,
        dropout: float,
        max_len: int,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model, padding_idx=pad_id)
        self.position = nn.Embedding(max_len, d_model)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                d_model, heads, ffn_dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        for layer in self.layers:
            layer.self_attn.dropout = 0.0  # the flash kernels have no attention dropout: both paths run without
            layer.dropout, layer.dropout1, layer.dropout2 = (CheapMaskDropout(dropout) for _ in range(3))
        self.norm = nn.LayerNorm(d_model)
        self.dropout = CheapMaskDropout(dropout)
        self.classifier = FusedLinear(d_model, 2)

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(ids) * math.sqrt(self.embedding.embedding_dim) + self.position(positions))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.to(ids.device)
        if int(lengths.max()) > self.position.num_embeddings:
            raise ValueError(
                f"a sequence has {int(lengths.max())} tokens, the model reads at most "
                f"{self.position.num_embeddings} (max_len)"
            )
        valid = _valid(lengths, ids.shape[1])
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        x = self._embed(ids[valid], positions[valid])  # (T, E): the real tokens, one review after another
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        max_len = int(lengths.max())
        for layer in self.layers:
            x = layer.forward_packed(x, cu_seqlens, max_len)
        x = self.norm(x)
        review = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), lengths)
        mean = x.new_zeros(len(lengths), x.shape[1]).index_add_(0, review, x) / lengths[:, None].to(x.dtype)
        return self.classifier(self.dropout(mean))

    def forward_padded(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The same network on the padded batch with a key-padding mask (the reference of the packed path)."""
        lengths = lengths.to(ids.device)
        valid = _valid(lengths, ids.shape[1])
        x = self._embed(ids, torch.arange(ids.shape[1], device=ids.device).expand_as(ids))
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~valid)
        x = self.norm(x) * valid[..., None]
        return self.classifier(self.dropout(x.sum(1) / lengths[:, None].to(x.dtype)))


# --- the baseline -------------------------------------------------------------------------------------------
# NOTE: one fit with a fixed C: the earlier pick among C = 0.5, 2, 8 on validation cost three fits (about 70 % of
# the 107 s the baseline took on a synthesized 25k/25k set, 2 busy cores); 4 is that grid's geometric middle
BASELINE_C = 4.0
TFIDF_SETTINGS = {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True, "strip_accents": "unicode"}


def _finite_or_none(value: float) -> float | None:
    """None for a metric a split cannot define (ROC-AUC of one class): metrics.json stays strict JSON."""
    return value if math.isfinite(value) else None


def tfidf_baseline(
    train: tuple[list[str], list[int]],
    val: tuple[list[str], list[int]],
    others: dict[str, tuple[list[str], list[int]]],
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """TF-IDF of words and word pairs + logistic regression (C = ``BASELINE_C``), fitted on ``train``;
    ``{split: {"baseline_accuracy", "baseline_roc_auc", "baseline_f1", "baseline_c"}}`` for val and ``others``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from tqdm.auto import tqdm

    if len(set(train[1])) < 2:
        raise DataError(None, "the training split holds one class only: neither the baseline nor a model can learn")

    def bar(texts, what):  # the vectorizer reads an iterable: the bar follows it document by document
        return tqdm(
            texts,
            desc=f"TF-IDF baseline: {what}",
            unit=" texts",
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
            disable=not progress,
        )

    vectorizer = TfidfVectorizer(**TFIDF_SETTINGS)
    x_train = vectorizer.fit_transform(bar(train[0], "fitting the vectorizer on train"))
    splits = {"val": val, **others}
    features = {name: vectorizer.transform(bar(texts, name)) for name, (texts, _) in splits.items()}
    with tqdm(
        total=1,
        desc="TF-IDF baseline: fitting logistic regression",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=not progress,
    ) as fitting:
        classifier = LogisticRegression(C=BASELINE_C, max_iter=2000).fit(x_train, train[1])
        fitting.update()
    results = {}
    for name, (_, labels) in splits.items():
        metrics = binary_metrics(classifier.predict_proba(features[name])[:, 1], np.asarray(labels))
        results[name] = {f"baseline_{k}": _finite_or_none(metrics[k]) for k in ("accuracy", "roc_auc", "f1")}
        results[name]["baseline_c"] = BASELINE_C
    return results


def cache_dir() -> Path:
    """``$DEEPFUSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/deepfuse``, else ``~/.cache/deepfuse``."""
    if os.environ.get("DEEPFUSE_CACHE_DIR"):
        return Path(os.environ["DEEPFUSE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepfuse"


def baseline_cache_path(splits: dict[str, list]) -> Path:
    """Where the baseline's metrics for exactly these reviews are kept: a hash of every split's files (path,
    size, modification time, label) and of the baseline's settings; any changed file gives another key."""
    import sklearn

    digest = hashlib.sha256(repr(("tfidf-baseline/1", BASELINE_C, TFIDF_SETTINGS, sklearn.__version__)).encode())
    for name, reviews in splits.items():
        digest.update(f"split {name}\n".encode())
        for review in reviews:
            stat = review.path.stat()
            fields = (os.path.abspath(review.path), stat.st_size, stat.st_mtime_ns, review.label)
            digest.update(("\0".join(map(str, fields)) + "\n").encode())
    return cache_dir() / "tfidf-baseline" / f"{digest.hexdigest()[:32]}.json"


def cached_tfidf_baseline(splits: dict[str, list], progress: bool) -> dict[str, dict[str, float]]:
    """``tfidf_baseline`` of the reviews of train, val and test, read from the cache when these very files were
    scored before (a minute on the full set), else computed and stored there."""
    path = baseline_cache_path(splits)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass  # not cached yet (or unreadable): compute it
    texts = {name: ([r.text for r in reviews], [r.label for r in reviews]) for name, reviews in splits.items()}
    results = tfidf_baseline(texts["train"], texts["val"], {"test": texts["test"]}, progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(results))
        temporary.replace(path)
    except OSError as error:
        warnings.warn(
            f"could not cache the TF-IDF baseline in {path.parent} ({error.strerror or error}); set "
            "DEEPFUSE_CACHE_DIR to a writable folder to skip recomputing it",
            stacklevel=2,
        )
    return results


class BaselineOnDemand:
    """The TF-IDF baseline of train / val / test, computed (or read from the cache) the first time a split's metrics
    are asked for — at the first validation, not before the first training step: training never needs it."""

    def __init__(self, splits: dict[str, list], progress: bool) -> None:
        self.splits, self.progress, self.results = splits, progress, None

    def metrics(self, split: str) -> dict[str, float]:
        if self.results is None:
            self.results = cached_tfidf_baseline(self.splits, self.progress)
            self.splits = None  # the texts are no longer needed
        return self.results.get(split, {})


# --- the task ----------------------------------------------------------------------------------------------
COMMON = {
    "max_len": Option(512, "tokens kept per review (the first ones)"),
    "vocab_size": Option(20000, "vocabulary size, [PAD] and [UNK] included (fitted on the training split)"),
    "dropout": Option(0.3, "dropout on embeddings and features"),
}
ARCHS = {
    "lstm": {
        "embed_dim": Option(128, "embedding width"),
        "hidden_size": Option(128, "LSTM hidden units per direction"),
        "layers": Option(1, "LSTM layers"),
        "bidirectional": Option(True, "read the review both ways"),
    },
    "transformer": {
        "d_model": Option(128, "model width"),
        "heads": Option(4, "attention heads"),
        "ffn_dim": Option(256, "feed-forward width"),
        "layers": Option(2, "encoder layers"),
    },
}


# Variable-length batches without padding work size their kernels from the data, on the host.
CUDA_GRAPHS_BLOCKERS = {
    "lstm": "its PackedSequence is sized by the review lengths, read on the host every batch (torch's packing)",
    "transformer": "its packed tokens are counted on the host every batch (the longest review sizes the attention "
    "grid, the real tokens are gathered by a mask)",
}


class SentimentTask(Task):
    data_help = "IMDb's aclImdb folder (or the folder holding it): {train,test}/{pos,neg}/<id>_<rating>.txt"
    metric = "accuracy"

    def __init__(self, name: str, arch: str, defaults: dict, dropout: float) -> None:
        self.name, self.arch = name, arch
        self.cuda_graphs_blocker = CUDA_GRAPHS_BLOCKERS[arch]
        self.description = f"IMDb review sentiment ({arch}, variable lengths without padding work)"
        self.defaults = defaults
        self.options = COMMON | {"dropout": Option(dropout, COMMON["dropout"].help)} | ARCHS[arch]

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        if path is None:
            raise DataError(None, f"--data is required: {self.data_help}")
        settings = self.with_defaults(config)
        # bars on the main process only (torchrun sets RANK); every phase over a few seconds says what it does
        progress = bool(config.get("progress", True)) and os.environ.get("RANK", "0") == "0"
        root = imdb.find_root(path)
        train, val = imdb.carve_validation(imdb.load_split(root, "train", progress))
        test = imdb.load_split(root, "test", progress)
        if state is None:
            from tqdm.auto import tqdm

            texts = tqdm(
                (r.text for r in train),
                total=len(train),
                desc="fitting the vocabulary",
                unit=" texts",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                disable=not progress,
            )
            vocabulary = Vocabulary.fit(texts, settings["vocab_size"])
            state = {
                "tokenizer": vocabulary.to_json(),
                "vocab_size": len(vocabulary),
                "pad_id": vocabulary.pad_id,
                "classes": CLASSES,
            }
        vocabulary = Vocabulary.from_json(state["tokenizer"])
        splits = {"train": train, "val": val, "test": test}
        every_text = [r.text for reviews in splits.values() for r in reviews]  # one bar for the three splits
        ids = iter(vocabulary.encode(every_text, settings["max_len"], progress))
        datasets = {
            name: TokenDataset([next(ids) for _ in reviews], [r.label for r in reviews])
            for name, reviews in splits.items()
        }
        baseline = BaselineOnDemand(splits, progress)
        for name, dataset in datasets.items():
            dataset.extra["baseline"] = functools.partial(baseline.metrics, name)
        counts = " / ".join(f"{len(d)} {k}" for k, d in datasets.items())
        summary = f"IMDb in {root}: {counts}, vocabulary {len(vocabulary)}, max_len {settings['max_len']}"
        return Data(
            datasets["train"],
            datasets["val"],
            datasets["test"],
            state=state,
            collate=functools.partial(collate_padded, pad_id=state["pad_id"]),
            lengths=datasets["train"].lengths,
            summary=summary,
        )

    def build(self, config: dict, state: dict) -> nn.Module:
        s = self.with_defaults(config)
        vocab, pad = state["vocab_size"], state.get("pad_id", 0)
        if self.arch == "lstm":
            return LSTMClassifier(
                vocab, s["embed_dim"], s["hidden_size"], s["layers"], s["bidirectional"], s["dropout"], pad
            )
        return TransformerClassifier(
            vocab, s["d_model"], s["heads"], s["ffn_dim"], s["layers"], s["dropout"], s["max_len"], pad
        )

    def example(self, batch_size: int, config: dict):
        s = self.with_defaults(config)
        state = {"tokenizer": None, "vocab_size": s["vocab_size"], "pad_id": 0, "classes": CLASSES}
        generator = torch.Generator().manual_seed(0)
        lengths = torch.randint(s["max_len"] // 4, s["max_len"] + 1, (batch_size,), generator=generator)
        ids = torch.randint(2, s["vocab_size"], (batch_size, int(lengths.max())), generator=generator)
        ids = ids.masked_fill(~_valid(lengths, ids.shape[1]), 0)
        return state, (ids, lengths), torch.randint(0, 2, (batch_size,), generator=generator)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.to(torch.promote_types(outputs.dtype, torch.float32)), targets)

    def metrics(self, outputs, targets, state, split):
        metrics = binary_metrics(positive_probability(outputs), targets.numpy())
        return {k: _finite_or_none(v) for k, v in metrics.items() if k != "threshold"}

    def validate(self, run, split):
        metrics, outputs, targets = super().validate(run, split)
        dataset = getattr(run.data, split)
        if dataset is not None and metrics:
            baseline = getattr(dataset, "extra", {}).get("baseline")
            metrics.update(baseline() if baseline is not None else {})
        return metrics, outputs, targets

    def plots(self, outputs, targets, state, out_dir, data):
        pictures = super().plots(outputs, targets, state, out_dir, data)
        if len(torch.unique(targets)) == 2:
            pictures.append(roc_curve_png(positive_probability(outputs), targets.numpy(), out_dir / "roc_curve.png"))
        return pictures

    def predict_inputs(self, model, inputs, config, state, out_dir):
        names, texts = [], []
        for item in inputs:
            path = Path(item)
            if item.strip() and path.is_dir():
                files = sorted(path.glob("*.txt"))
                if not files:
                    raise DataError(path, "holds no .txt review files")
                names += [str(f) for f in files]
                texts += [read_review(f) for f in files]
            elif item.strip() and path.is_file():
                names.append(str(path))
                texts.append(read_review(path))
            elif path.suffix == ".txt" or "/" in item:
                raise DataError(path, "no such file (give a review's text in quotes, a .txt file or a folder)")
            else:
                names.append(repr(item if len(item) <= 40 else item[:37] + "..."))
                texts.append(clean(item))
        # an empty text would still get an answer (the [UNK] token's): nothing was said, so nothing to classify
        empty = next((name for name, text in zip(names, texts, strict=True) if not text.strip()), None)
        if empty is not None:
            raise DataError(
                None,
                f"{empty}: an empty review (only white space), nothing to classify; give the "
                "review's text in quotes, a .txt file or a folder of them",
            )
        vocabulary = Vocabulary.from_json(state["tokenizer"])
        ids = vocabulary.encode(texts, self.with_defaults(config)["max_len"])
        device = next(model.parameters()).device
        lines = []
        for start in range(0, len(ids), 64):
            chunk = [(torch.tensor(s), torch.tensor(0)) for s in ids[start : start + 64]]
            (padded, lengths), _ = collate_padded(chunk, state["pad_id"])
            positive = torch.softmax(model(padded.to(device), lengths.to(device)).float(), -1)[:, 1].cpu()
            for name, p in zip(names[start : start + 64], positive.tolist(), strict=True):
                label, probability = ("positive", p) if p >= 0.5 else ("negative", 1.0 - p)
                lines.append(f"{name}: {label} (probability {probability:.3f})")
        return lines


TASKS = [
    SentimentTask("sentiment-lstm", "lstm", {"epochs": 5, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-2}, 0.3),
    # NOTE: amp auto = bf16 autocast on a CPU with native bf16: the training step at --max-len 256 1.1x (in a run,
    # every batch a new shape) to 1.27x (repeated shapes) faster than fp32, one thread of a Zen 5, the same learning
    # curve; torch's CPU flash attention is half of the bf16 step and bf16 does not speed it up
    # (benchmarks/results/cpu/2026-12-05-sentiment-transformer-train.md)
    SentimentTask(
        "sentiment-transformer",
        "transformer",
        {"epochs": 5, "batch_size": 64, "lr": 5e-4, "weight_decay": 1e-2, "amp": "auto"},
        0.1,
    ),
]
