"""PNG figures of the project, drawn with matplotlib's non-interactive Agg backend and written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from mnist_ray.atomic import atomic_path

DPI = 100


def _save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG to ``path`` atomically and close it, even on failure."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return Path(path)


def plot_curves(history: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Draw accuracy and loss (train vs validation) against epoch in two side-by-side panels."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    epochs = history["epoch"]
    ax_acc.plot(epochs, history["train_acc"], "o-", label="train")
    ax_acc.plot(epochs, history["val_acc"], "s-", label="validation")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    ax_loss.plot(epochs, history["train_loss"], "o-", label="train")
    ax_loss.plot(epochs, history["val_loss"], "s-", label="validation")
    ax_loss.set(title="loss", xlabel="epoch", ylabel="loss")
    for ax in (ax_acc, ax_loss):
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, path: str | Path, class_names: list[str] | None = None, title: str = "") -> Path:
    """Draw an annotated confusion-matrix heat map (rows: true label, columns: predicted)."""
    matrix = np.asarray(matrix)
    n = matrix.shape[0]
    names = class_names if class_names is not None else [str(i) for i in range(n)]
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(matrix.shape[1]):
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(matrix.shape[1]), names)
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return _save(fig, path)


def plot_digit_errors(errors: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Draw a bar chart of misclassifications per digit, in the frame's order, with counts on the bars."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = np.arange(len(errors))  # positions, not strings: matplotlib warns on digit-like category names
    bars = ax.bar(x, errors["errors"], color="tab:red")
    ax.set_xticks(x, [str(d) for d in errors["digit"]])
    ax.bar_label(bars, labels=[str(int(e)) for e in errors["errors"]], padding=2)
    ax.margins(y=0.12)
    ax.set(xlabel="digit", ylabel="errors", title=title or "errors per digit")
    return _save(fig, path)


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    path: str | Path,
    columns: int = 8,
) -> Path:
    """Draw a gallery of misclassified images, each titled with true label, prediction and confidence."""
    k = len(images)
    if k == 0:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=14)
        ax.axis("off")
        return _save(fig, path)
    columns = max(1, min(columns, k))
    rows = math.ceil(k / columns)
    size = (max(3.0, 1.6 * columns + 0.4), max(3.0, 1.8 * rows + 0.4))
    fig, axes = plt.subplots(rows, columns, figsize=size, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < k:
            ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
            text = f"true {int(labels[index])} / pred {int(predicted[index])} ({float(confidence[index]):.2f})"
            ax.set_title(text, fontsize=7)
    return _save(fig, path)


def plot_history(history: pd.DataFrame, path: str | Path) -> Path:
    """Draw scheduled-evaluation accuracy (in %) over runs, with run ids as x tick labels."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(history) + 2), 4.5))
    x = np.arange(len(history))
    ax.plot(x, history["accuracy"].to_numpy(dtype=float) * 100, "o-")
    ax.set_xticks(x, [str(r) for r in history["run_id"]], rotation=45, ha="right", fontsize=8)
    ax.set(xlabel="run", ylabel="accuracy (%)", title="scheduled evaluation accuracy")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_tune(trials: pd.DataFrame, curves: dict[str, pd.DataFrame], path: str | Path) -> Path:
    """Draw best validation accuracy against learning rate per optimizer, and the best trials' curves."""
    fig, (ax_lr, ax_curves) = plt.subplots(1, 2, figsize=(11, 4.5))
    for optimizer, group in trials.groupby("optimizer", sort=True):
        ax_lr.scatter(group["lr"], group["best_val_acc"], label=str(optimizer))
    ax_lr.set_xscale("log")
    ax_lr.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on narrow ranges
    ax_lr.set(xlabel="learning rate", ylabel="best validation accuracy", title="trials")
    for trial_id, curve in curves.items():
        ax_curves.plot(curve["epoch"], curve["val_acc"], "o-", label=str(trial_id))
    ax_curves.set(xlabel="epoch", ylabel="validation accuracy", title="best trials")
    ax_curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_lr, ax_curves):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    return _save(fig, path)
