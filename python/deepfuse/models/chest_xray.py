"""Pneumonia on chest X-rays: a residual CNN on grayscale images (Kaggle's Chest X-Ray Images (Pneumonia)).

Network: stem ConvBNAct(1→w, 3x3, stride 2) → ConvBNAct(w→w) → 2x2 max-pool, then residual blocks
(w, 2w, 4w, 8w channels; stride 2 from the second stage), global average pool, dropout, FusedLinear(→2).
A residual block (``deepfuse.nn.ResidualBlock``) is ResNet's basic block, act(BN(conv(act(BN(conv(x))))) +
shortcut(x)); its second ConvBNAct takes the residual: in eval, BatchNorm is folded into the convolution and the
skip's add and the ReLU run in the convolution's epilogue (one kernel); in training, BatchNorm needs the batch's
statistics of the convolution's output, so the add and ReLU follow it unfused. Images are 224 px by default
(the resolution the published results use; the originals are 1000-2000 px).

Data: validation carved from train by patient (deepfuse.data.chest_xray); the 3:1 PNEUMONIA:NORMAL imbalance
is met by weighted sampling (each class drawn equally often). The decision threshold is chosen on validation
(Youden's J) and kept in the checkpoint; test metrics use it. Augmentation: random resized crop (85-100 % of
the area), rotation within ±10°; no horizontal flip (the heart is on the left: a mirrored X-ray is not one).

Targets on the official 624-image test split (GPU, from scratch): accuracy >= 0.92, ROC-AUC >= 0.96 — untested
until someone runs it on the full set.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepfuse.data import DataError
from deepfuse.data.chest_xray import patient_id, patient_split, read_chest_xray
from deepfuse.data.images import Augment
from deepfuse.models._image_classifier import (
    ImageClassifierTask,
    ResidualCNN,
    image_options,
    predict_probabilities,
    readable_inputs,
)
from deepfuse.training.loops import split_metrics
from deepfuse.training.metrics import binary_metrics, choose_threshold, positive_probability
from deepfuse.training.plots import confusion_matrix_png, roc_curve_png
from deepfuse.training.task import Data

CLASSES = ["NORMAL", "PNEUMONIA"]
MEAN, STD = (0.50,), (0.22,)  # measured on the 19 real sample images; BN follows the stem, so roughly is enough
MIN_IMAGE_SIZE = 64  # the last stage sees 1/32 of the image


class ChestXrayTask(ImageClassifierTask):
    name = "chest_xray"
    description = "pneumonia vs normal on chest X-rays (residual CNN, grayscale); Kaggle's chest_xray folders"
    data_help = "Kaggle's chest_xray folder: train/{NORMAL,PNEUMONIA}/*.jpeg, test/ likewise (val/ is not used)"
    metric = "roc_auc"
    defaults = {"epochs": 30, "batch_size": 32, "lr": 2e-3, "weight_decay": 0.05}  # untested on the full set
    options = image_options(224, MIN_IMAGE_SIZE, "fraction of train's images (whole patients) held out for validation")
    channels, mean, std, classes = 1, MEAN, STD, CLASSES
    augment = Augment(scale=(0.85, 1.0), ratio=(0.9, 1.1), flip=0.0, rotate=10.0)

    def initial_state(self, settings: dict) -> dict:
        return super().initial_state(settings) | {"threshold": 0.5}  # chosen on validation by metrics()

    def load_data(self, path: Path | None, config: dict, state: dict | None = None) -> Data:
        settings, state = self.settings_and_state(path, config, state)
        files = read_chest_xray(path, bool(settings["skip_bad"]))
        train, val = patient_split(files.train, float(settings["val_fraction"]), int(config.get("seed", 0)))
        if not val:
            raise DataError(files.root / "train", "too few patients to hold any out for validation")
        labels = [label for _, label in train]
        counts = np.bincount(labels, minlength=2)
        if counts.min() == 0:
            raise DataError(files.root / "train", f"the training split holds no {CLASSES[int(counts.argmin())]} image")
        weights = [1.0 / counts[label] for label in labels]  # each class drawn as often as the other
        patients = len({patient_id(f) for f, _ in val})
        summary = (
            f"{files.root}: {len(train)} train / {len(val)} val ({patients} patients held out of train) / "
            + (f"{len(files.test)} test" if files.test else "no test/ folder: final metrics on val")
            + f"; train NORMAL:PNEUMONIA {counts[0]}:{counts[1]}, weighted sampling"
            + (f"; the published val/ ({files.unused_val} images) unused" if files.unused_val else "")
        )
        return self.image_data(train, val, files.test, state, sample_weights=weights, summary=summary)

    def build(self, config: dict, state: dict) -> nn.Module:
        return ResidualCNN(1, width=state.get("width", 32), dropout=0.3, stem_pool=True)

    def metrics(self, outputs: torch.Tensor, targets: torch.Tensor, state: dict, split: str) -> dict:
        """Binary metrics at the threshold chosen on validation ("val" chooses it and stores it in ``state``)."""
        probability, truth = positive_probability(outputs), targets.cpu().numpy()
        if split == "val":
            state["threshold"] = choose_threshold(probability, truth)
        metrics = binary_metrics(probability, truth, state.get("threshold", 0.5))
        predicted = (probability >= metrics["threshold"]).astype(int)
        metrics["confusion_matrix"] = [[int(((truth == t) & (predicted == p)).sum()) for p in (0, 1)] for t in (0, 1)]
        return metrics

    def validate(self, run, split: str):
        if split == "test" and run.data.val is not None and len(run.data.val):
            # the threshold must come from these very weights (the engine may have loaded best.pt since the
            # last validation): choose it on validation again first
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # its single-class warning was given at that validation already
                split_metrics(run, "val")
        return split_metrics(run, split)

    def plots(self, outputs, targets, state, out_dir, data):
        probability, truth = positive_probability(outputs), targets.cpu().numpy()
        threshold = state.get("threshold", 0.5)
        decided = torch.from_numpy((probability >= threshold).astype(np.int64))
        pictures = [
            confusion_matrix_png(
                nn.functional.one_hot(decided, 2).float(), targets, out_dir / "confusion_matrix.png", CLASSES
            )
        ]
        if len(np.unique(truth)) == 2:
            pictures.append(roc_curve_png(probability, truth, out_dir / "roc_curve.png", threshold))
        return pictures

    def predict_inputs(self, model, inputs, config, state, out_dir):
        files = readable_inputs(inputs, config)
        probability = predict_probabilities(model, files, self.transform(state, False), config)
        threshold = state.get("threshold", 0.5)
        return [
            f"{f}: P(pneumonia) {p:.4f} → {CLASSES[int(p >= threshold)]} (threshold {threshold:.3f})"
            for f, p in zip(files, probability, strict=True)
        ]


TASK = ChestXrayTask()
