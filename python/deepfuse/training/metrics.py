"""Metrics over a whole split (scikit-learn computes them) and the run's metric files (history.csv, metrics.json)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Accuracy (and macro F1) of class logits (N, C) against integer targets (N,)."""
    # scikit-learn: optional (deepfuse[models]), and ~1 s to import: loaded by the metrics that use it
    from sklearn.metrics import accuracy_score, f1_score

    predicted = logits.argmax(-1).cpu().numpy()
    truth = targets.cpu().numpy()
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def positive_probability(logits: torch.Tensor) -> np.ndarray:
    """P(class 1) from (N, 2) logits or (N,) / (N, 1) logits of the positive class."""
    logits = logits.float().cpu()
    if logits.dim() == 2 and logits.shape[1] == 2:
        return torch.softmax(logits, -1)[:, 1].numpy()
    return torch.sigmoid(logits.reshape(-1)).numpy()


def choose_threshold(probability: np.ndarray, truth: np.ndarray) -> float:
    """The threshold maximising Youden's J (sensitivity + specificity - 1) on these (validation) samples;
    0.5, with a warning, when they do not hold both classes."""
    # scikit-learn: optional (deepfuse[models]), and ~1 s to import: loaded by the metrics that use it
    from sklearn.metrics import roc_curve

    if len(np.unique(truth)) < 2:
        warnings.warn("the validation split holds one class only: decision threshold falls back to 0.5", stacklevel=2)
        return 0.5
    fpr, tpr, thresholds = roc_curve(truth, probability)
    # the curve's first point (threshold +inf) calls everything negative: never a useful decision threshold
    best = 1 + int(np.argmax(tpr[1:] - fpr[1:]))
    return float(min(max(thresholds[best], 0.0), 1.0))


def binary_metrics(probability: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, ROC-AUC, sensitivity (recall of class 1), specificity, precision and F1 at ``threshold``."""
    # scikit-learn: optional (deepfuse[models]), and ~1 s to import: loaded by the metrics that use it
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, roc_auc_score

    truth = np.asarray(truth).astype(int)
    predicted = (np.asarray(probability) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(truth, predicted, labels=[0, 1]).ravel()
    both = len(np.unique(truth)) == 2
    return {
        "accuracy": float((tp + tn) / max(len(truth), 1)),
        "roc_auc": float(roc_auc_score(truth, probability)) if both else float("nan"),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "precision": float(precision_score(truth, predicted, zero_division=0)),
        "f1": float(f1_score(truth, predicted, zero_division=0)),
        "threshold": float(threshold),
    }


def regression_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    # scikit-learn: optional (deepfuse[models]), and ~1 s to import: loaded by the metrics that use it
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    return {
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mae": float(mean_absolute_error(truth, predicted)),
    }


HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_metric", "lr", "seconds", "samples_per_s")


def append_history(path: Path, row: dict) -> None:
    """One row per epoch: train/val loss and the model's validation metric."""
    new = not path.exists()
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    temporary.replace(path)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
