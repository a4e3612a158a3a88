"""Evaluation reports: Parquet tables, PNG figures and a Markdown summary, written atomically (writing only: the
figures come from :mod:`mnist_ray.reports.metrics`).

A report folder ``<reports>/<run-id>/`` (a local path or a URI such as ``s3://bucket/reports``) is
assembled in a local temporary folder and published with a manifest written last, so readers see it
complete or not at all. ``<reports>/history.parquet`` is rebuilt from the complete reports.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mnist_ray import data
from mnist_ray.errors import MnistRayError
from mnist_ray.files import folders, publishing, storage
from mnist_ray.files.folders import ReportFolder
from mnist_ray.reports import metrics, plots
from mnist_ray.settings.rules import check_name

if TYPE_CHECKING:  # the evaluation writes its reports with this module
    from mnist_ray.inference.evaluation import Evaluation

log = logging.getLogger(__name__)
GALLERY = 32


def check_new(reports: str, report_id: str, overwrite: bool) -> str:
    """The report folder (path or URI) ``report_id`` under ``reports``; refuse an existing one unless ``overwrite``."""
    check_name("run id", report_id)
    target = folders.report_folder(reports, report_id).path
    if not overwrite and storage.exists(target):
        raise MnistRayError(f"report {target} already exists: pass --overwrite or another --run-id")
    return target


def write_report(
    ev: Evaluation,
    target: str,
    started_at: str,
    seconds: float,
    overwrite: bool = False,
    min_accuracy: float | None = None,
) -> dict[str, Any]:
    """Write every report file for ``ev`` into ``target`` (complete or absent) and rebuild the history."""
    info = data.DATASET_INFO[ev.dataset]
    preds = ev.predictions
    matrix = metrics.confusion(preds)
    errors = metrics.named(metrics.digit_errors(preds), info)
    classes = metrics.named(metrics.per_class(matrix), info)
    summary = metrics.summary_metrics(preds)
    row = {
        "run_id": ReportFolder(target).id,
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
        local = ReportFolder(folder)
        pd.DataFrame([row]).to_parquet(local.metrics, index=False)
        preds[["index", "label", "predicted", "confidence", "correct"]].to_parquet(local.predictions, index=False)
        metrics.confusion_frame(matrix, info).to_parquet(local.confusion_matrix, index=False)
        errors.to_parquet(local.digit_errors, index=False)
        classes.to_parquet(local.per_class, index=False)
        _figures(ev, matrix, errors, info, local)
        Path(local.summary).write_text(_summary(row, errors, classes, info))
        publishing.publish_dir(Path(folder), target, overwrite=overwrite)
    rebuild_history(ReportFolder(target).root)
    return row


def _figures(
    ev: Evaluation, matrix: np.ndarray, errors: pd.DataFrame, info: data.DatasetInfo, local: ReportFolder
) -> None:
    """The report's PNGs: confusion matrix, errors per class and the most confident mistakes, classes by name."""
    title = f"{ev.model} on {ev.dataset} test set"
    plots.plot_confusion(matrix, local.confusion_png, class_names=info.classes, title=title)
    plots.plot_digit_errors(errors, local.digit_errors_png, title=title, class_names=info.classes, noun=info.noun)
    wrong = ev.predictions[~ev.predictions["correct"]].nlargest(GALLERY, "confidence")  # most confident first
    idx = wrong["index"].to_numpy()
    plots.plot_misclassified(
        ev.images_at(idx),
        wrong["label"].to_numpy(),
        wrong["predicted"].to_numpy(),
        wrong["confidence"].to_numpy(),
        local.misclassified_png,
        class_names=info.classes,
    )


def rebuild_history(reports: str) -> pd.DataFrame:
    """Rebuild ``history.parquet`` and ``history.png`` from every complete report's metrics.parquet.

    No lock and no read-modify-write: each writer derives the whole table from the per-run files, so
    overlapping scheduled runs and object stores are safe, and a damaged file is skipped with a warning
    (and healed by the next rebuild) instead of breaking the evaluation that writes it.
    """
    rows = []
    for report_id in sorted(storage.list_dirs(reports)):
        folder = folders.report_folder(reports, report_id)
        if not publishing.is_complete(folder.path) or not storage.is_file(folder.metrics):
            continue  # being written or interrupted, or a comparison of models: never part of the history
        try:
            with storage.local_copy(folder.metrics) as local:
                rows.append(pd.read_parquet(local))
        except Exception as exc:  # noqa: BLE001 - any damage to one report must not stop the rest
            log.warning("warning: skipping %s in the history: %s", folder.path, str(exc).splitlines()[0][:200])
    history = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if not history.empty:
        history = history.sort_values("started_at", kind="stable", ignore_index=True)
    table, figure = folders.reports_history(reports)
    with tempfile.TemporaryDirectory(prefix="mnist-ray-history") as folder:
        local_table, local_figure = (Path(p) for p in folders.reports_history(folder))
        history.to_parquet(local_table, index=False)
        storage.upload_file(local_table, table)
        if not history.empty:
            plots.plot_history(history, local_figure)
            storage.upload_file(local_figure, figure)
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
        f"![confusion matrix]({ReportFolder.confusion_png})",
        f"![errors per {noun}]({ReportFolder.digit_errors_png})",
        f"![most confident mistakes]({ReportFolder.misclassified_png})",
        "",
    ]
    return "\n".join(lines)
