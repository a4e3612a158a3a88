"""Comparing models (the notebook's ANN vs CNN) and reports that name Fashion-MNIST's classes.

The tables and counts are checked on hand-made predictions first (no Ray); one test then trains a
tiny ANN and compares it with the suite's tiny CNN through the evaluation job, against their own reports.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import image

from mnist_ray import data
from mnist_ray.files import folders
from mnist_ray.inference import evaluation
from mnist_ray.jobs import evaluate
from mnist_ray.reports import comparison, metrics, report
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models
from tests.conftest import REPORT_FILES
from tests.helpers import assert_one_line_error, call

COMPARISON_FILES = {
    "MANIFEST.json",
    "comparison.parquet",
    "comparison.png",
    "disagreements.parquet",
    "disagreements.png",
    "summary.md",
}
METRICS = ["run_id", "checkpoint", "model", "dataset", "n", "accuracy", "loss", "macro_precision", "macro_f1"]


def _result(
    run_id: str, dataset: str, labels: list[int], predicted: list[int], model: str = "cnn"
) -> comparison.Result:
    """Hand-made predictions of one model and the metrics its report would hold."""
    preds = pd.DataFrame({"index": np.arange(len(labels)), "label": labels, "predicted": predicted})
    preds["confidence"] = np.linspace(0.5, 0.99, len(labels))
    preds["loss"] = np.where(preds["label"] == preds["predicted"], 0.1, 2.0)
    preds["correct"] = preds["label"] == preds["predicted"]
    images = np.random.default_rng(0).integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
    test = data.write_test(tempfile.mkdtemp(prefix="mnist-ray-compare-"), images, np.array(labels))
    ev = evaluation.Evaluation(preds, f"/runs/{run_id}/best_checkpoint/model.pt", model, dataset, test)
    return ev, {"run_id": run_id, "model": model, "dataset": dataset, **metrics.summary_metrics(preds)}


def test_a_fashion_mnist_report_names_its_classes(tmp_path):
    labels = [i % 10 for i in range(100)]
    ev, _ = _result("fashion", "fashion-mnist", labels, [(y + (i % 3 == 0)) % 10 for i, y in enumerate(labels)])
    report.write_report(ev, str(tmp_path / "fashion"), "2026-01-01T00:00:00+00:00", 1.0)
    folder = tmp_path / "fashion"
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    summary = (folder / "summary.md").read_text()
    assert "## Classes ranked by errors" in summary and "| rank | class |" in summary and "## Per class" in summary
    assert "| T-shirt/top |" in summary and "| Ankle boot |" in summary
    assert "digit" not in summary.replace("(digit_errors.png)", "")  # the file keeps its name in every report
    per_class = pd.read_parquet(folder / "per_class.parquet")
    assert per_class.columns[:2].tolist() == ["class", "name"]
    assert per_class["name"].tolist() == list(data.DATASET_INFO["fashion-mnist"].classes)
    errors = pd.read_parquet(folder / "digit_errors.parquet")
    assert all(data.DATASET_INFO["fashion-mnist"].classes[r["class"]] == r["name"] for _, r in errors.iterrows())
    cm = pd.read_parquet(folder / "confusion_matrix.parquet")
    assert cm.loc[(cm["true"] == 9) & (cm["predicted"] == 0), "true_name"].item() == "Ankle boot"


def test_an_mnist_report_keeps_digit_wording(tmp_path):
    ev, _ = _result("digits", "mnist", [0, 1, 2, 3], [0, 1, 2, 2])
    report.write_report(ev, str(tmp_path / "digits"), "2026-01-01T00:00:00+00:00", 1.0)
    summary = (tmp_path / "digits" / "summary.md").read_text()
    assert "## Digits ranked by errors" in summary and "| rank | digit |" in summary
    assert pd.read_parquet(tmp_path / "digits" / "per_class.parquet").columns[:2].tolist() == ["digit", "name"]


def test_comparison_counts_on_known_predictions(tmp_path):
    labels = [0, 1, 2, 3, 4, 5]
    cnn = _result("nb-cnn", "mnist", labels, [0, 1, 2, 3, 9, 9])  # wrong on 4 and 5
    ann = _result("nb-ann", "mnist", labels, [0, 7, 7, 3, 4, 9], model="ann")  # wrong on 1, 2 and 5
    table = comparison.write_comparison([cnn, ann], str(tmp_path / "compare-nb"))
    assert {p.name for p in (tmp_path / "compare-nb").iterdir()} == COMPARISON_FILES
    assert table["errors"].tolist() == [2, 3]
    assert table["wrong_only_here"].tolist() == [1, 2] and table["right_only_here"].tolist() == [2, 1]
    disagree = pd.read_parquet(tmp_path / "compare-nb" / "disagreements.parquet")
    assert disagree["index"].tolist() == [1, 1, 2, 2, 4, 4] and disagree["run_id"].tolist()[:2] == ["nb-cnn", "nb-ann"]
    summary = (tmp_path / "compare-nb" / "summary.md").read_text()
    assert "[nb-ann](../nb-ann/summary.md)" in summary and "3 images are right for some models" in summary
    assert image.imread(tmp_path / "compare-nb" / "comparison.png").shape[1] > 800


def test_run_ids_are_named_after_the_runs():
    sources = ["/r/cnn/best_checkpoint/model.pt", "s3://b/runs/ann/best_checkpoint/model.pt", "/r/x/model.pt"]
    assert comparison.run_ids(sources, "nb") == ["nb-cnn", "nb-ann", "nb-x"]
    assert comparison.run_ids(["/a/smoke/best_checkpoint/model.pt", "/b/smoke/best_checkpoint/model.pt"], "nb") == [
        "nb-smoke-1",
        "nb-smoke-2",
    ]
    assert folders.checkpoint_label("/r/tiny/checkpoint_epoch_002/model.pt") == "tiny-checkpoint_epoch_002"


def _run(root: Path, name: str, dataset: str = "mnist") -> str:
    """A run folder whose best checkpoint is an untrained CNN (enough for checks made before Ray)."""
    folder = root / name / "best_checkpoint"
    folder.mkdir(parents=True)
    config = TrainConfig(dataset=dataset).to_dict()
    checkpoints.save(folder, model=models.build("cnn"), optimizer=None, config=config, epoch=1, history=[])
    return str(root / name)


def test_the_same_run_twice_or_mixed_flags_are_one_line_and_exit_2(tmp_path, capsys):
    run = _run(tmp_path, "cnn")
    result = call(evaluate.main, capsys, "--run", run, "--run", run + "/", "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, f"--run {run} and --run {run}/ are the same checkpoint")
    assert not (tmp_path / "r").exists()
    checkpoint = run + "/best_checkpoint/model.pt"
    result = call(evaluate.main, capsys, "--run", run, "--checkpoint", checkpoint, "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, "pass only one of --checkpoint, --run and --models-dir (repeat --checkpoint or --run")
    assert not (tmp_path / "r").exists()


def test_models_of_different_datasets_are_not_compared(tmp_path, capsys):
    args = ["--run", _run(tmp_path, "digits"), "--run", _run(tmp_path, "clothes", "fashion-mnist")]
    result = call(evaluate.main, capsys, *args, "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, "the models of one comparison must be trained on the same dataset")
    assert not (tmp_path / "r").exists()


def test_cnn_vs_ann_comparison_agrees_with_their_own_reports(tiny_run, tiny_ann, tmp_path, capsys):
    args = ["--run", tiny_run[2].run_dir, "--run", tiny_ann.run_dir, "--reports", str(tmp_path), "--run-id", "nb"]
    result = call(evaluate.main, capsys, *args, "--actors", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"comparison: {tmp_path / 'compare-nb'}" in result.stdout
    own = {run_id: tmp_path / run_id for run_id in ("nb-tiny", "nb-tiny-ann")}
    for folder in own.values():
        assert {p.name for p in folder.iterdir()} == REPORT_FILES
    table = pd.read_parquet(tmp_path / "compare-nb" / "comparison.parquet")
    single = pd.concat([pd.read_parquet(f / "metrics.parquet") for f in own.values()], ignore_index=True)
    pd.testing.assert_frame_equal(table[single.columns], single)
    assert table["model"].tolist() == ["cnn", "ann"]
    cnn, ann = (pd.read_parquet(f / "predictions.parquet")["correct"].to_numpy() for f in own.values())
    assert table["errors"].tolist() == [(~cnn).sum(), (~ann).sum()]
    assert table["wrong_only_here"].tolist() == [(~cnn & ann).sum(), (~ann & cnn).sum()]
    assert table["right_only_here"].tolist() == [(cnn & ~ann).sum(), (ann & ~cnn).sum()]
    disagree = pd.read_parquet(tmp_path / "compare-nb" / "disagreements.parquet")
    assert sorted(disagree["index"].unique()) == np.flatnonzero(cnn != ann).tolist()
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert sorted(history["run_id"]) == ["nb-tiny", "nb-tiny-ann"]  # the comparison is no evaluation of its own
