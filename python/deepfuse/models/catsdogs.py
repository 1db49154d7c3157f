"""Dogs vs. Cats: a residual CNN on RGB photos (Kaggle's Dogs vs. Cats, or one folder per class).

Network: stem ConvBNAct(3→w, 3x3, stride 2) → ConvBNAct(w→w), then residual blocks (w, 2w, 4w, 8w channels;
stride 2 from the second stage; the skip's add and ReLU fused in the second convolution's epilogue in eval, see
deepfuse.nn.ResidualBlock), global average pool, dropout, FusedLinear(→2). Class 1 is dog. Images are 128 px by
default: the target asks for at most 128 px, and the photos (up to 500 px) keep their subject at that size.

Data: Kaggle's train/ (label from the file name) with a seeded 10 % validation split per class, or class folders
(with their own val/ and test/ when present). Augmentation: random resized crop (35-100 % of the area, aspect
3/4-4/3) and horizontal flip. ``predict`` on Kaggle's test1/ folder (or any images) writes ``submission.csv``
(``id,label``: the probability of dog) into the output folder.

Target on the full 25,000 training images (GPU, from scratch, <= 128 px): >= 92 % validation accuracy —
untested until someone runs it on the full set.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import nn

from deepfuse.data import DataError
from deepfuse.data.catsdogs import read_catsdogs, split_off
from deepfuse.data.images import Augment
from deepfuse.models._image_classifier import (
    ImageClassifierTask,
    ResidualCNN,
    image_options,
    predict_probabilities,
    readable_inputs,
)
from deepfuse.training.metrics import binary_metrics, positive_probability
from deepfuse.training.plots import roc_curve_png
from deepfuse.training.task import Data

CLASSES = ["cat", "dog"]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet's: photos of the same kind
MIN_IMAGE_SIZE = 32  # the last stage sees 1/16 of the image


class CatsDogsTask(ImageClassifierTask):
    name = "catsdogs"
    description = "cats vs dogs photos (residual CNN); Kaggle's train/cat.N.jpg, dog.N.jpg or cats/ and dogs/ folders"
    data_help = "Kaggle's folder (train/cat.0.jpg, train/dog.0.jpg ..., test1/) or cats/ and dogs/ (under train/)"
    metric = "accuracy"
    defaults = {"epochs": 40, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05}  # untested on the full set
    options = image_options(128, MIN_IMAGE_SIZE, "fraction of train held out for validation (without a val/ folder)")
    channels, mean, std, classes = 3, MEAN, STD, CLASSES
    augment = Augment(scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3), flip=0.5)

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        settings, state = self.settings_and_state(path, config, state)
        files = read_catsdogs(path, bool(settings["skip_bad"]))
        train, val = files.train, files.val
        if val is None:
            train, val = split_off(train, float(settings["val_fraction"]), int(config.get("seed", 0)))
        if not val:
            raise DataError(path, "too few images to hold any out for validation")
        test1 = f"; test1/ ({len(list(files.test1.iterdir()))} files) is for predict" if files.test1 else ""
        summary = (
            f"{path} ({files.layout}): {len(train)} train / {len(val)} val"
            + (f" / {len(files.test)} test" if files.test else "")
            + test1
        )
        return self.image_data(train, val, files.test, state, summary=summary)

    def build(self, config: dict, state: dict) -> nn.Module:
        return ResidualCNN(3, width=state.get("width", 32), dropout=0.2)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor, state: dict, split: str) -> dict:
        """Accuracy, and the binary metrics of "dog" at probability 0.5 (ROC-AUC, F1, ...)."""
        return binary_metrics(positive_probability(outputs), targets.cpu().numpy(), 0.5)

    def plots(self, outputs, targets, state, out_dir, data):
        pictures = super().plots(outputs, targets, state, out_dir, data)
        truth = targets.cpu().numpy()
        if len(set(truth.tolist())) == 2:
            pictures.append(roc_curve_png(positive_probability(outputs), truth, out_dir / "roc_curve.png", 0.5))
        return pictures

    def predict_inputs(self, model, inputs, config, state, out_dir):
        """P(dog) per image; writes Kaggle's submission.csv (id = the file name's stem) into ``out_dir``."""
        files = readable_inputs(inputs, config)
        ids: dict[str, Path] = {}
        for f in files:
            if f.stem in ids:
                raise DataError(f, f"has the same id ({f.stem}) as {ids[f.stem]}: submission.csv needs unique ids")
            ids[f.stem] = f
        probability = predict_probabilities(model, files, self.transform(state, False), config)
        out_dir.mkdir(parents=True, exist_ok=True)
        submission = out_dir / "submission.csv"
        with submission.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["id", "label"])
            writer.writerows([f.stem, f"{p:.6f}"] for f, p in zip(files, probability, strict=True))
        lines = [f"{f}: P(dog) {p:.4f} → {CLASSES[int(p >= 0.5)]}" for f, p in zip(files, probability, strict=True)]
        return [*lines, f"wrote {submission} ({len(files)} rows: id,label = probability of dog)"]


TASK = CatsDogsTask()
