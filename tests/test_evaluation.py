"""Batch evaluation with Ray Data on a checkpoint trained in the tests: tables agree, files are sane."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from mnist_ray import evaluation, reports
from mnist_ray.errors import EXIT_BELOW_THRESHOLD, CheckpointError, MnistRayError
from tests.conftest import REPO, REPORT_FILES

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    """One evaluation report of the tiny run's best checkpoint."""
    root = tmp_path_factory.mktemp("reports")
    folder, metrics = reports.evaluate_to_report(tiny_run[2].best_checkpoint, root, "first")
    return root, folder, metrics


def test_report_has_every_file(report):
    _, folder, _ = report
    assert {p.name for p in folder.iterdir()} == REPORT_FILES


def test_tables_agree_with_predictions(report):
    _, folder, metrics = report
    preds = pd.read_parquet(folder / "predictions.parquet")
    cm = pd.read_parquet(folder / "confusion_matrix.parquet")
    errors = pd.read_parquet(folder / "digit_errors.parquet")
    assert len(preds) == 10000 and preds["index"].tolist() == list(range(10000))
    assert len(cm) == 100 and cm["count"].sum() == len(preds)
    assert cm.loc[cm["true"] == cm["predicted"], "count"].sum() == preds["correct"].sum()
    assert metrics["accuracy"] == pytest.approx(preds["correct"].mean())
    assert (preds["correct"] == (preds["label"] == preds["predicted"])).all()
    assert errors["errors"].is_monotonic_increasing and errors["rank"].tolist() == list(range(1, 11))
    wrong = preds.loc[~preds["correct"], "label"].value_counts()
    assert all(row.errors == wrong.get(row.digit, 0) for row in errors.itertuples())
    assert errors["total"].sum() == 10000
    one = pd.read_parquet(folder / "metrics.parquet")
    assert len(one) == 1 and one["accuracy"].iloc[0] == metrics["accuracy"] and one["model"].iloc[0] == "cnn"
    assert 0.8 < metrics["accuracy"] < 1 and 0 < metrics["loss"] < 1


def test_pngs_are_real_images(report):
    _, folder, _ = report
    for name in ["confusion_matrix.png", "digit_errors.png", "misclassified.png"]:
        h, w = image.imread(folder / name).shape[:2]
        assert h > 300 and w > 400, name
    assert "![confusion matrix](confusion_matrix.png)" in (folder / "summary.md").read_text()


def test_history_grows_and_same_id_needs_overwrite(report, tiny_run):
    root, _, _ = report
    assert len(pd.read_parquet(root / "history.parquet")) == 1
    with pytest.raises(MnistRayError, match="already exists: pass --overwrite"):
        reports.evaluate_to_report(tiny_run[2].best_checkpoint, root, "first")
    reports.evaluate_to_report(tiny_run[2].best_checkpoint, root, "second")
    history = pd.read_parquet(root / "history.parquet")
    assert history["run_id"].tolist() == ["first", "second"]
    assert image.imread(root / "history.png").shape[1] > 400
    reports.evaluate_to_report(tiny_run[2].best_checkpoint, root, "second", overwrite=True)
    assert pd.read_parquet(root / "history.parquet")["run_id"].tolist() == ["first", "second"]


def test_min_accuracy_exit_code_after_writing_report(ray_session, tiny_run, tmp_path):
    """The real job, joined to the test's Ray cluster: writes the report, then exits 3."""
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs" / "evaluate.py"),
            "--run",
            str(tiny_run[2].run_dir),
            "--reports",
            str(tmp_path),
            "--run-id",
            "gate",
            "--min-accuracy",
            "0.9999",
            "--actors",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == EXIT_BELOW_THRESHOLD, result.stderr[-2000:]
    assert "is below --min-accuracy 0.9999" in result.stderr
    assert (tmp_path / "gate" / "summary.md").is_file()


def test_checkpoint_resolution(tiny_run, tmp_path):
    run_dir = tiny_run[2].run_dir
    assert evaluation.resolve_checkpoint(run=str(run_dir)) == tiny_run[2].best_checkpoint
    assert evaluation.resolve_checkpoint(models_dir=str(run_dir.parent)) == tiny_run[2].best_checkpoint
    with pytest.raises(CheckpointError, match="no finished run"):
        evaluation.resolve_checkpoint(models_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluation.resolve_checkpoint(checkpoint=str(tmp_path / "missing.pt"))


def test_metrics_helpers_on_known_predictions():
    preds = pd.DataFrame({"label": [0, 0, 1, 1], "predicted": [0, 1, 1, 1], "loss": [0.1, 2.0, 0.1, 0.1]})
    preds["correct"] = preds["label"] == preds["predicted"]
    m = evaluation.confusion(preds, classes=2)
    assert m.tolist() == [[1, 1], [0, 2]]
    per = evaluation.per_class(m)
    assert per["precision"].tolist() == [1.0, pytest.approx(2 / 3)] and per["recall"].tolist() == [0.5, 1.0]
    s = evaluation.summary_metrics(preds, classes=2)
    assert s["accuracy"] == 0.75 and s["loss"] == pytest.approx(0.575)
    assert np.isclose(s["macro_f1"], (2 / 3 + 0.8) / 2)
