"""PNG figures of the project, drawn with matplotlib's non-interactive Agg backend and written atomically."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from mnist_ray.files.atomic import atomic_path

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


def _names(n: int, class_names: Sequence[str] | None) -> list[str]:
    """Tick labels: the dataset's class names, or the label numbers."""
    return list(class_names) if class_names is not None else [str(i) for i in range(n)]


def _xticks(ax: Axes, positions: Sequence[int], names: list[str]) -> None:
    """Label the x axis with ``names``, slanted when they are words (Fashion-MNIST's "T-shirt/top")."""
    slanted = max(map(len, names), default=0) > 2
    ax.set_xticks(positions, names, rotation=45 if slanted else 0, ha="right" if slanted else "center")


def _draw_confusion(fig: Figure, ax: Axes, matrix: np.ndarray, names: list[str], title: str) -> None:
    """An annotated confusion-matrix heat map on ``ax`` (rows: true label, columns: predicted)."""
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", color=colour, fontsize=8)
    _xticks(ax, range(matrix.shape[1]), names)
    ax.set_yticks(range(matrix.shape[0]), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def plot_confusion(
    matrix: np.ndarray, path: str | Path, class_names: Sequence[str] | None = None, title: str = ""
) -> Path:
    """Draw an annotated confusion-matrix heat map (rows: true label, columns: predicted)."""
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    _draw_confusion(fig, ax, matrix, _names(matrix.shape[0], class_names), title or "confusion matrix")
    return _save(fig, path)


def _draw_errors(ax: Axes, errors: pd.DataFrame, names: list[str], noun: str, title: str) -> None:
    """Bars of misclassifications per class on ``ax``, in the frame's order, with counts on the bars."""
    x = np.arange(len(errors))  # positions, not strings: matplotlib warns on digit-like category names
    bars = ax.bar(x, errors["errors"], color="tab:red")
    _xticks(ax, x, [names[int(c)] for c in errors[noun]])
    ax.bar_label(bars, labels=[str(int(e)) for e in errors["errors"]], padding=2)
    ax.margins(y=0.12)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=noun, ylabel="errors", title=title)


def plot_digit_errors(
    errors: pd.DataFrame,
    path: str | Path,
    title: str = "",
    class_names: Sequence[str] | None = None,
    noun: str = "digit",
) -> Path:
    """Draw a bar chart of misclassifications per class (the ``noun`` column), in the frame's order."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _draw_errors(ax, errors, _names(len(errors), class_names), noun, title or f"errors per {noun}")
    return _save(fig, path)


def plot_comparison(
    panels: Sequence[tuple[str, np.ndarray, pd.DataFrame]],
    path: str | Path,
    class_names: Sequence[str] | None = None,
    noun: str = "digit",
) -> Path:
    """Models side by side, one column each: (title, confusion matrix, error ranking) per model.

    The error panels share one y scale, so bar heights compare across models.
    """
    k = len(panels)
    fig, axes = plt.subplots(2, k, figsize=(6.5 * k, 11), squeeze=False, gridspec_kw={"height_ratios": [3, 2]})
    names = _names(len(panels[0][1]), class_names)
    for column, (title, matrix, errors) in enumerate(panels):
        _draw_confusion(fig, axes[0, column], np.asarray(matrix), names, title)
        _draw_errors(axes[1, column], errors, names, noun, f"errors per {noun}, ascending")
    top = max(float(errors["errors"].max()) for _, _, errors in panels)
    for ax in axes[1]:
        ax.set_ylim(0, max(1.0, top) * 1.15)
    return _save(fig, path)


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    path: str | Path,
    columns: int = 8,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw a gallery of misclassified images, each titled with true label, prediction and confidence."""
    return plot_disagreements([("", images, labels, predicted, confidence)], path, columns, class_names)


def plot_disagreements(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    path: str | Path,
    columns: int = 8,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Galleries of mistakes, one block of rows per (heading, images, labels, predicted, confidence).

    Each image is titled with its true class, the prediction and its confidence; a heading (when
    given) names whose mistakes a block shows, e.g. one model's that another model gets right.
    """
    names = _names(10, class_names)
    headed = any(heading for heading, *_ in rows)
    columns = max(1, min(columns, max(len(r[1]) for r in rows)))
    heights = [math.ceil(max(1, len(r[1])) / columns) for r in rows]
    size = (max(3.0, 1.6 * columns + 0.4 + 1.8 * headed), max(3.0, 1.8 * sum(heights) + 0.4))
    fig, axes = plt.subplots(sum(heights), columns + headed, figsize=size, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    first = 0
    for (heading, images, labels, predicted, confidence), height in zip(rows, heights, strict=True):
        if headed:  # wrapped to its cell by hand, and left out of tight_layout, which would shrink the images
            text = "\n".join(textwrap.fill(line, 22) for line in heading.splitlines())
            axes[first, 0].text(0, 0.5, text, ha="left", va="center", fontsize=8).set_in_layout(False)
        cells = axes[first : first + height, headed:].flat
        if len(images) == 0:
            next(cells).text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=12)
        for ax, image, true, pred, conf in zip(cells, images, labels, predicted, confidence, strict=False):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"true {names[int(true)]}\npred {names[int(pred)]} ({float(conf):.2f})", fontsize=7)
        first += height
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
    """Draw best validation accuracy against learning rate per optimizer (a sweep of seeds: against the seed), and
    the best trials' curves."""
    fig, (ax_lr, ax_curves) = plt.subplots(1, 2, figsize=(11, 4.5))
    if "seed" in trials:  # one recipe, several seeds: the spread an ensemble draws on
        ax_lr.scatter(trials["seed"], trials["best_val_acc"])
        ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_lr.set(xlabel="seed", ylabel="best validation accuracy", title="trials")
    else:
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
