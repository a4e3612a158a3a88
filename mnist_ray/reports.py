"""Evaluation reports: Parquet tables, PNG figures and a Markdown summary, written atomically.

A report folder ``<reports>/<run-id>/`` is assembled in a temporary folder and renamed into
place, so it is either complete or absent. ``<reports>/history.parquet`` gains one row per run.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnist_ray import atomic, evaluation, plots
from mnist_ray.errors import MnistRayError

GALLERY = 32


def new_run_id() -> str:
    """A sortable UTC timestamp such as ``20261125T153012Z``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def check_run_dir(reports: str | Path, run_id: str, overwrite: bool) -> Path:
    """The report folder for ``run_id``; refuse an existing one unless ``overwrite``."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise MnistRayError(f"run id {run_id!r} must be a plain folder name")
    path = Path(reports).expanduser().resolve() / run_id
    if path.exists() and not overwrite:
        raise MnistRayError(f"report {path} already exists: pass --overwrite or another --run-id")
    return path


def write_report(
    ev: evaluation.Evaluation,
    reports: str | Path,
    run_id: str,
    started_at: str,
    seconds: float,
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Write every report file for ``ev`` into ``<reports>/<run_id>/`` and append to the history."""
    target = check_run_dir(reports, run_id, overwrite)
    preds = ev.predictions
    matrix = evaluation.confusion(preds)
    errors = evaluation.digit_errors(preds)
    classes = evaluation.per_class(matrix)
    metrics = {
        "run_id": run_id,
        "checkpoint": str(ev.checkpoint),
        "model": ev.model,
        "dataset": ev.dataset,
        **evaluation.summary_metrics(preds),
        "started_at": started_at,
        "seconds": seconds,
    }
    with atomic.atomic_dir(target, overwrite=overwrite) as tmp:
        pd.DataFrame([metrics]).to_parquet(tmp / "metrics.parquet", index=False)
        preds[["index", "label", "predicted", "confidence", "correct"]].to_parquet(
            tmp / "predictions.parquet", index=False
        )
        _confusion_frame(matrix).to_parquet(tmp / "confusion_matrix.parquet", index=False)
        errors.to_parquet(tmp / "digit_errors.parquet", index=False)
        classes.to_parquet(tmp / "per_class.parquet", index=False)
        title = f"{ev.model} on {ev.dataset} test set"
        plots.plot_confusion(matrix, tmp / "confusion_matrix.png", title=title)
        plots.plot_digit_errors(errors, tmp / "digit_errors.png", title=title)
        _gallery(ev, tmp / "misclassified.png")
        (tmp / "summary.md").write_text(_summary(metrics, errors, classes))
    append_history(Path(reports).expanduser().resolve(), metrics)
    return target, metrics


def evaluate_to_report(
    checkpoint: Path, reports: str | Path, run_id: str, overwrite: bool = False, **predict_kwargs: Any
) -> tuple[Path, dict[str, Any]]:
    """Score ``checkpoint`` on the test set with Ray Data and write its report; Ray must be initialised."""
    check_run_dir(reports, run_id, overwrite)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    ev = evaluation.predict(checkpoint, **predict_kwargs)
    return write_report(ev, reports, run_id, started_at, time.perf_counter() - start, overwrite)


def _confusion_frame(matrix: np.ndarray) -> pd.DataFrame:
    true, predicted = np.indices(matrix.shape)
    return pd.DataFrame({"true": true.ravel(), "predicted": predicted.ravel(), "count": matrix.ravel()})


def _gallery(ev: evaluation.Evaluation, path: Path) -> Path:
    """The most confident mistakes first."""
    wrong = ev.predictions[~ev.predictions["correct"]].nlargest(GALLERY, "confidence")
    idx = wrong["index"].to_numpy()
    return plots.plot_misclassified(
        ev.images[idx], wrong["label"].to_numpy(), wrong["predicted"].to_numpy(), wrong["confidence"].to_numpy(), path
    )


def append_history(reports: Path, metrics: dict[str, Any]) -> None:
    """Add this run's metrics row to ``history.parquet`` and redraw ``history.png``."""
    from filelock import FileLock

    file = reports / "history.parquet"
    with FileLock(str(reports / ".history.lock")):  # scheduled runs may overlap
        rows = pd.DataFrame([metrics])
        if file.is_file():
            previous = pd.read_parquet(file)
            rows = pd.concat([previous[previous["run_id"] != metrics["run_id"]], rows], ignore_index=True)
        atomic.write_parquet(file, rows)
        plots.plot_history(rows, reports / "history.png")


def _summary(m: dict[str, Any], errors: pd.DataFrame, classes: pd.DataFrame) -> str:
    lines = [
        f"# Evaluation {m['run_id']}",
        "",
        f"- checkpoint: `{m['checkpoint']}`",
        f"- model: {m['model']}, dataset: {m['dataset']}, test images: {m['n']}",
        f"- **accuracy {m['accuracy']:.2%}**, mean cross-entropy loss {m['loss']:.4f}",
        f"- macro precision {m['macro_precision']:.4f}, recall {m['macro_recall']:.4f}, F1 {m['macro_f1']:.4f}",
        f"- started {m['started_at']}, took {m['seconds']:.1f} s",
        "",
        "## Digits ranked by errors (ascending)",
        "",
        "| rank | digit | errors | total | error rate |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {r.rank} | {r.digit} | {r.errors} | {r.total} | {r.error_rate:.2%} |" for r in errors.itertuples()),
        "",
        "## Per digit",
        "",
        "| digit | precision | recall | F1 | support |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r.digit} | {r.precision:.4f} | {r.recall:.4f} | {r.f1:.4f} | {r.support} |"
            for r in classes.itertuples()
        ),
        "",
        "## Figures",
        "",
        "![confusion matrix](confusion_matrix.png)",
        "![errors per digit](digit_errors.png)",
        "![most confident mistakes](misclassified.png)",
        "",
    ]
    return "\n".join(lines)
