"""Evaluation reports: Parquet tables, PNG figures and a Markdown summary, written atomically.

A report folder ``<reports>/<run-id>/`` (a local path or a URI such as ``s3://bucket/reports``) is
assembled in a local temporary folder and published with a manifest written last, so readers see it
complete or not at all. ``<reports>/history.parquet`` is rebuilt from the complete reports.
"""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnist_ray import data
from mnist_ray.errors import MnistRayError
from mnist_ray.files import publishing, storage
from mnist_ray.inference import scoring
from mnist_ray.reports import plots
from mnist_ray.settings.rules import check_name

log = logging.getLogger(__name__)
GALLERY = 32


def new_run_id() -> str:
    """A sortable UTC timestamp such as ``20261125T153012Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def check_run_dir(reports: str, run_id: str, overwrite: bool) -> str:
    """The report folder (path or URI) for ``run_id``; refuse an existing one unless ``overwrite``."""
    check_name("run id", run_id)
    target = storage.join(storage.normalize(reports), run_id)
    if not overwrite and storage.exists(target):
        raise MnistRayError(f"report {target} already exists: pass --overwrite or another --run-id")
    return target


def write_report(
    ev: scoring.Evaluation,
    target: str,
    started_at: str,
    seconds: float,
    overwrite: bool = False,
    min_accuracy: float | None = None,
) -> dict[str, Any]:
    """Write every report file for ``ev`` into ``target`` (complete or absent) and rebuild the history."""
    info = data.DATASET_INFO[ev.dataset]
    preds = ev.predictions
    matrix = scoring.confusion(preds)
    errors, classes = named(scoring.digit_errors(preds), info), named(scoring.per_class(matrix), info)
    summary = scoring.summary_metrics(preds)
    metrics = {
        "run_id": target.rstrip("/").rsplit("/", 1)[-1],
        "checkpoint": ev.checkpoint,
        "model": ev.model,
        "dataset": ev.dataset,
        **summary,
        "min_accuracy": min_accuracy,
        "passed": None if min_accuracy is None else bool(summary["accuracy"] >= min_accuracy),
        "started_at": started_at,
        "seconds": seconds,
    }
    with tempfile.TemporaryDirectory(prefix="mnist-ray-report") as folder:
        tmp = Path(folder)
        pd.DataFrame([metrics]).to_parquet(tmp / "metrics.parquet", index=False)
        preds[["index", "label", "predicted", "confidence", "correct"]].to_parquet(
            tmp / "predictions.parquet", index=False
        )
        confusion_frame(matrix, info).to_parquet(tmp / "confusion_matrix.parquet", index=False)
        errors.to_parquet(tmp / "digit_errors.parquet", index=False)
        classes.to_parquet(tmp / "per_class.parquet", index=False)
        _figures(ev, matrix, errors, info, tmp)
        (tmp / "summary.md").write_text(_summary(metrics, errors, classes, info))
        publishing.publish_dir(tmp, target, overwrite=overwrite)
    rebuild_history(target.rstrip("/").rsplit("/", 1)[0])
    return metrics


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


def _figures(
    ev: scoring.Evaluation, matrix: np.ndarray, errors: pd.DataFrame, info: data.DatasetInfo, tmp: Path
) -> None:
    """The report's PNGs: confusion matrix, errors per class and the most confident mistakes, classes by name."""
    title = f"{ev.model} on {ev.dataset} test set"
    plots.plot_confusion(matrix, tmp / "confusion_matrix.png", class_names=info.classes, title=title)
    plots.plot_digit_errors(errors, tmp / "digit_errors.png", title=title, class_names=info.classes, noun=info.noun)
    wrong = ev.predictions[~ev.predictions["correct"]].nlargest(GALLERY, "confidence")  # most confident first
    idx = wrong["index"].to_numpy()
    plots.plot_misclassified(
        ev.images_at(idx),
        wrong["label"].to_numpy(),
        wrong["predicted"].to_numpy(),
        wrong["confidence"].to_numpy(),
        tmp / "misclassified.png",
        class_names=info.classes,
    )


def evaluate_to_report(
    checkpoint: str, reports: str, run_id: str, overwrite: bool = False, data_dir: str | None = None, **kwargs: Any
) -> tuple[str, dict[str, Any]]:
    """Check the report folder, load the checkpoint, score it and write its report; Ray must be initialised.

    For callers that have done neither check before Ray (train --evaluate, tests); the evaluation job does them
    before Ray starts and calls :func:`score_and_report`. ``kwargs`` go to :func:`mnist_ray.inference.scoring.predict`.
    """
    target = check_run_dir(reports, run_id, overwrite)
    prep = scoring.prepare(checkpoint, data_dir=data_dir)
    return target, score_and_report(prep, target, overwrite, **kwargs)[1]


def score_and_report(
    prep: scoring.Prepared,
    target: str,
    overwrite: bool = False,
    min_accuracy: float | None = None,
    **predict_kwargs: Any,
) -> tuple[scoring.Evaluation, dict[str, Any]]:
    """Score a prepared checkpoint with Ray Data and write its report to ``target``; returns the predictions (a
    comparison of models reuses them) and the report's metrics."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    ev = scoring.predict(prep, **predict_kwargs)
    return ev, write_report(ev, target, started_at, time.perf_counter() - start, overwrite, min_accuracy)


def rebuild_history(reports: str) -> pd.DataFrame:
    """Rebuild ``history.parquet`` and ``history.png`` from every complete report's metrics.parquet.

    No lock and no read-modify-write: each writer derives the whole table from the per-run files, so
    overlapping scheduled runs and object stores are safe, and a damaged file is skipped with a warning
    (and healed by the next rebuild) instead of breaking the evaluation that writes it.
    """
    rows = []
    for run_id in sorted(storage.list_dirs(reports)):
        folder = storage.join(reports, run_id)
        if not publishing.is_complete(folder) or not storage.is_file(storage.join(folder, "metrics.parquet")):
            continue  # being written or interrupted, or a comparison of models: never part of the history
        try:
            with storage.local_copy(storage.join(folder, "metrics.parquet")) as local:
                rows.append(pd.read_parquet(local))
        except Exception as exc:  # noqa: BLE001 - any damage to one report must not stop the rest
            log.warning("warning: skipping %s in the history: %s", folder, str(exc).splitlines()[0][:200])
    history = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if not history.empty:
        history = history.sort_values("started_at", kind="stable", ignore_index=True)
    with tempfile.TemporaryDirectory(prefix="mnist-ray-history") as folder:
        history.to_parquet(Path(folder) / "history.parquet", index=False)
        storage.upload_file(Path(folder) / "history.parquet", storage.join(reports, "history.parquet"))
        if not history.empty:
            plots.plot_history(history, Path(folder) / "history.png")
            storage.upload_file(Path(folder) / "history.png", storage.join(reports, "history.png"))
    return history


def _summary(m: dict[str, Any], errors: pd.DataFrame, classes: pd.DataFrame, info: data.DatasetInfo) -> str:
    noun = info.noun
    lines = [
        f"# Evaluation {m['run_id']}",
        "",
        f"- checkpoint: `{m['checkpoint']}`",
        f"- model: {m['model']}, dataset: {m['dataset']}, test images: {m['n']}",
        f"- **accuracy {m['accuracy']:.2%}**, mean cross-entropy loss {m['loss']:.4f}",
        f"- macro precision {m['macro_precision']:.4f}, recall {m['macro_recall']:.4f}, F1 {m['macro_f1']:.4f}",
        f"- started {m['started_at']}, took {m['seconds']:.1f} s",
        "",
        f"## {info.plural.capitalize()} ranked by errors (ascending)",
        "",
        f"| rank | {noun} | errors | total | error rate |",
        "|---:|---|---:|---:|---:|",
        *(f"| {r.rank} | {r.name} | {r.errors} | {r.total} | {r.error_rate:.2%} |" for r in errors.itertuples()),
        "",
        f"## Per {noun}",
        "",
        f"| {noun} | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r.name} | {r.precision:.4f} | {r.recall:.4f} | {r.f1:.4f} | {r.support} |"
            for r in classes.itertuples()
        ),
        "",
        "## Figures",
        "",
        "![confusion matrix](confusion_matrix.png)",
        f"![errors per {noun}](digit_errors.png)",
        "![most confident mistakes](misclassified.png)",
        "",
    ]
    return "\n".join(lines)
