"""PNG pictures of a run: learning curves, confusion matrix, ROC curve, a grid of images (matplotlib, Agg)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def pyplot():
    # matplotlib: optional (deepfuse[plots]); loaded when a picture is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(figure, path: Path) -> Path:
    """Lays the figure out, writes it to ``path`` as a PNG (100 dpi) and frees it; returns ``path``."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot().close(figure)
    return path


def learning_curves_png(history_csv: Path, path: Path, metric: str) -> Path:
    """Train/val loss and the validation metric per epoch."""
    plt = pyplot()
    with history_csv.open() as file:
        rows = list(csv.DictReader(file))
    epochs = [int(r["epoch"]) for r in rows]

    def column(name):
        return [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows]

    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, column("train_loss"), "o-", label="train")
    loss_axes.plot(epochs, column("val_loss"), "o-", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_axes.legend()
    metric_axes.plot(epochs, column("val_metric"), "o-", color="tab:green")
    metric_axes.set(xlabel="epoch", ylabel=metric, title=f"validation {metric}")
    return save_png(figure, path)


def confusion_matrix_png(
    logits: torch.Tensor, targets: torch.Tensor, path: Path, class_names: Sequence[str] | None = None
) -> Path:
    # scikit-learn: optional (deepfuse[models]), and ~1 s to import: loaded by the metrics that use it
    from sklearn.metrics import confusion_matrix

    plt = pyplot()
    classes = logits.shape[-1]
    matrix = confusion_matrix(targets.cpu().numpy(), logits.argmax(-1).cpu().numpy(), labels=list(range(classes)))
    names = list(class_names) if class_names else [str(i) for i in range(classes)]
    side = max(3.5, 1.0 + 0.6 * classes)  # room for long class names ("PNEUMONIA")
    figure, axes = plt.subplots(figsize=(side, side))
    axes.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    axes.set(
        xticks=range(classes),
        yticks=range(classes),
        xticklabels=names,
        yticklabels=names,
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix",
    )
    return save_png(figure, path)


def roc_curve_png(probability: np.ndarray, truth: np.ndarray, path: Path, threshold: float | None = None) -> Path:
    # scikit-learn: optional (deepfuse[models]), and ~1 s to import: loaded by the metrics that use it
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fpr, tpr, thresholds = roc_curve(truth, probability)
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot(fpr, tpr, label=f"AUC {roc_auc_score(truth, probability):.3f}")
    axes.plot([0, 1], [0, 1], "--", color="gray")
    if threshold is not None:
        at = int(np.argmin(np.abs(thresholds - threshold)))
        axes.plot(fpr[at], tpr[at], "o", color="tab:red", label=f"threshold {threshold:.2f}")
    axes.set(
        xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title="ROC curve"
    )
    axes.legend(loc="lower right")
    return save_png(figure, path)


def image_grid_png(images: torch.Tensor, captions: Sequence[str], path: Path, title: str, columns: int = 8) -> Path:
    """Images (N, C, H, W) or (N, H, W) in a grid with a caption each (e.g. misclassified samples)."""
    plt = pyplot()
    count = max(len(images), 1)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.6 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        image = images[index].float().cpu()
        if image.dim() == 3:
            image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
        low, high = image.min(), image.max()
        ax.imshow(((image - low) / (high - low + 1e-8)).numpy(), cmap="gray" if image.dim() == 2 else None)
        ax.set_title(captions[index], fontsize=7)
    figure.suptitle(title)
    return save_png(figure, path)
