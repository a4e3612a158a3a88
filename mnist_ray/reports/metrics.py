"""Metrics of a model's predictions on a test set: pure functions of the predictions table.

The table has one row per image: ``label``, ``predicted``, ``loss`` and ``correct``. Per-class tables come out
keyed by label; :func:`named` gives them the dataset's own class names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mnist_ray import data


def confusion(predictions: pd.DataFrame, classes: int = 10) -> np.ndarray:
    """Counts[true, predicted] as a (classes, classes) int array."""
    flat = predictions["label"].to_numpy() * classes + predictions["predicted"].to_numpy()
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def per_class(matrix: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame(
        {"digit": np.arange(len(tp)), "precision": precision, "recall": recall, "f1": f1, "support": actual}
    )


def digit_errors(predictions: pd.DataFrame, classes: int = 10) -> pd.DataFrame:
    """Mistakes per true digit, in ascending order of errors (as the notebook ranked them)."""
    totals = np.bincount(predictions["label"], minlength=classes)
    errors = np.bincount(predictions.loc[~predictions["correct"], "label"], minlength=classes)
    table = pd.DataFrame({"digit": np.arange(classes), "errors": errors, "total": totals})
    table["error_rate"] = table["errors"] / table["total"].clip(lower=1)
    table = table.sort_values(["errors", "digit"], ignore_index=True)
    table["rank"] = np.arange(1, classes + 1)
    return table


def summary_metrics(predictions: pd.DataFrame, classes: int = 10) -> dict[str, float]:
    """Accuracy, mean cross-entropy and macro precision/recall/F1."""
    each = per_class(confusion(predictions, classes))
    return {
        "n": len(predictions),
        "accuracy": float(predictions["correct"].mean()),
        "loss": float(predictions["loss"].mean()),
        "macro_precision": float(each["precision"].mean()),
        "macro_recall": float(each["recall"].mean()),
        "macro_f1": float(each["f1"].mean()),
    }


def named(table: pd.DataFrame, info: data.DatasetInfo) -> pd.DataFrame:
    """A per-class table with its label column called what the dataset calls a class, then the class's name.

    MNIST keeps ``digit`` (names "0"-"9"); Fashion-MNIST gets ``class`` and "T-shirt/top", ... One
    mechanism for every dataset: the names and the noun come from its :class:`~mnist_ray.data.DatasetInfo`.
    """
    table = table.rename(columns={"digit": info.noun})
    table.insert(1, "name", [info.classes[int(c)] for c in table[info.noun]])
    return table


def confusion_frame(matrix: np.ndarray, info: data.DatasetInfo) -> pd.DataFrame:
    """The confusion matrix as rows of (true, predicted, count), with both classes' names."""
    true, predicted = np.indices(matrix.shape)
    names = np.asarray(info.classes)
    return pd.DataFrame(
        {
            "true": true.ravel(),
            "predicted": predicted.ravel(),
            "count": matrix.ravel(),
            "true_name": names[true.ravel()],
            "predicted_name": names[predicted.ravel()],
        }
    )
