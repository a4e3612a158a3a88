"""Batch evaluation with Ray Data on a checkpoint trained in the tests: tables agree, files are sane."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from mnist_ray import data
from mnist_ray.errors import EXIT_BELOW_THRESHOLD, CheckpointError, MnistRayError
from mnist_ray.inference import evaluation, scoring, sources
from mnist_ray.jobs import evaluate
from mnist_ray.reports import metrics
from tests.conftest import REPORT_FILES
from tests.helpers import call

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def report(tiny_run, tmp_path_factory):
    """One evaluation report of the tiny run's best checkpoint."""
    root = tmp_path_factory.mktemp("reports")
    folder, metrics = evaluation.evaluate_to_report(tiny_run[2].best_checkpoint, str(root), "first")
    return root, Path(folder), metrics


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


def test_the_actor_pool_of_gpu_evaluations_scores_as_the_cpu_tasks_do(tiny_run, report):
    """``--use-gpu`` keeps an actor pool (``scoring.score``); on CPUs it gives the tasks' predictions exactly."""
    _, folder, _ = report
    by_tasks = pd.read_parquet(folder / "predictions.parquet")
    by_actors = evaluation.score_test_set(evaluation.prepare(tiny_run[2].best_checkpoint), pool="actors").predictions
    pd.testing.assert_frame_equal(by_actors[by_tasks.columns], by_tasks, check_dtype=False)


def test_the_pipeline_scores_the_test_files_as_the_model_does_in_this_process(tiny_run, report):
    """Ray Data tasks read the test set from its IDX files in slices; the predictions are those of the same model
    run here over the arrays parsed here: the same labels and order, confidences and mean loss within 1e-6."""
    _, folder, metrics = report
    preds = pd.read_parquet(folder / "predictions.parquet")
    arrays = data.load()
    here = scoring.Predictor({"paths": [tiny_run[2].best_checkpoint]}, threads=2)(
        {"row": np.arange(10000), "label": arrays.test_y, "image": arrays.test_x}
    )
    assert (preds["label"].to_numpy() == arrays.test_y).all() and (preds["predicted"] == here["predicted"]).all()
    np.testing.assert_allclose(preds["confidence"], here["confidence"], rtol=0, atol=1e-6)
    assert metrics["loss"] == pytest.approx(float(here["loss"].mean()), abs=1e-6)


def test_history_is_rebuilt_from_complete_reports(tiny_run, tmp_path):
    ckpt, root = tiny_run[2].best_checkpoint, str(tmp_path)
    evaluation.evaluate_to_report(ckpt, root, "first")
    assert pd.read_parquet(tmp_path / "history.parquet")["run_id"].tolist() == ["first"]
    with pytest.raises(MnistRayError, match="already exists: pass --overwrite"):
        evaluation.evaluate_to_report(ckpt, root, "first")
    (tmp_path / "half-written").mkdir()  # an interrupted report: files but no manifest
    (tmp_path / "half-written" / "metrics.parquet").write_bytes(b"PAR1 x")
    evaluation.evaluate_to_report(ckpt, root, "second")
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert history["run_id"].tolist() == ["first", "second"]  # the incomplete one is never listed
    assert image.imread(tmp_path / "history.png").shape[1] > 400
    evaluation.evaluate_to_report(ckpt, root, "second", overwrite=True)
    assert pd.read_parquet(tmp_path / "history.parquet")["run_id"].tolist() == ["first", "second"]


def test_a_damaged_history_or_report_never_breaks_an_evaluation(tiny_run, tmp_path):
    ckpt = tiny_run[2].best_checkpoint
    evaluation.evaluate_to_report(ckpt, str(tmp_path), "old")
    (tmp_path / "history.parquet").write_bytes(b"PAR1 x")  # a damaged history file
    (tmp_path / "old" / "metrics.parquet").write_bytes(b"PAR1 x")  # and a damaged complete report
    _, metrics = evaluation.evaluate_to_report(ckpt, str(tmp_path), "new")
    assert metrics["accuracy"] > 0.8
    assert pd.read_parquet(tmp_path / "history.parquet")["run_id"].tolist() == ["new"]  # rebuilt, bad one skipped


def test_min_accuracy_exits_3_after_writing_the_report(tiny_run, tmp_path, capsys):
    """The evaluation job on the suite's Ray: writes the report (passed = False), then exits 3."""
    args = ["--run", tiny_run[2].run_dir, "--reports", str(tmp_path), "--run-id", "gate", "--actors", "1"]
    result = call(evaluate.main, capsys, *args, "--min-accuracy", "0.9999")
    assert result.returncode == EXIT_BELOW_THRESHOLD, result.stderr[-2000:]
    assert "is below --min-accuracy 0.9999" in result.stderr
    assert (tmp_path / "gate" / "summary.md").is_file()
    metrics = pd.read_parquet(tmp_path / "gate" / "metrics.parquet")
    assert not metrics["passed"].iloc[0] and metrics["min_accuracy"].iloc[0] == 0.9999


def test_checkpoint_resolution(tiny_run, tmp_path):
    run_dir = tiny_run[2].run_dir
    assert sources.resolve_checkpoint(run=run_dir) == tiny_run[2].best_checkpoint
    assert sources.resolve_checkpoint(models_dir=str(Path(run_dir).parent)) == tiny_run[2].best_checkpoint
    assert sources.resolve_checkpoint(checkpoint=str(Path(tiny_run[2].best_checkpoint).parent)).endswith("model.pt")
    with pytest.raises(CheckpointError, match="no finished run"):
        sources.resolve_checkpoint(models_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="does not exist"):
        sources.resolve_checkpoint(checkpoint=str(tmp_path / "missing.pt"))


def test_metrics_helpers_on_known_predictions():
    preds = pd.DataFrame({"label": [0, 0, 1, 1], "predicted": [0, 1, 1, 1], "loss": [0.1, 2.0, 0.1, 0.1]})
    preds["correct"] = preds["label"] == preds["predicted"]
    m = metrics.confusion(preds, classes=2)
    assert m.tolist() == [[1, 1], [0, 2]]
    per = metrics.per_class(m)
    assert per["precision"].tolist() == [1.0, pytest.approx(2 / 3)] and per["recall"].tolist() == [0.5, 1.0]
    s = metrics.summary_metrics(preds, classes=2)
    assert s["accuracy"] == 0.75 and s["loss"] == pytest.approx(0.575)
    assert np.isclose(s["macro_f1"], (2 / 3 + 0.8) / 2)
