"""Ensembles: several checkpoints scored, predicted with and exported as one model, the mean of their probabilities.

The ensemble's probabilities are checked against the members' own, computed here with plain torch (not the
project's scorer), within 1e-6. A sweep of seeds and its top trials by validation accuracy make the ensemble in
two commands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mnist_ray import data
from mnist_ray.jobs import evaluate, export, tune
from mnist_ray.training import checkpoints
from tests.conftest import REPORT_FILES
from tests.helpers import assert_one_line_error, call

TOLERANCE = 1e-6


def mean_probabilities(members: list[str], images: np.ndarray) -> np.ndarray:
    """The members' mean softmax on uint8 images, each model fed with the normalisation it was trained with."""
    probs = []
    for path in members:
        state = checkpoints.load(path)
        model = checkpoints.build_model(state)
        with torch.no_grad():
            logits = model(data.normalize(images, checkpoints.normalization(state)))
        probs.append(torch.softmax(logits.double(), 1).numpy())
    return np.mean(probs, axis=0)


def test_an_ensemble_needs_two_models_and_a_sweep_for_its_top(tmp_path, capsys):
    result = call(evaluate.main, capsys, "--run", str(tmp_path), "--ensemble", "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, "--ensemble needs two or more models")
    result = call(evaluate.main, capsys, "--ensemble-top", "3", "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, "--ensemble-top takes one --run: a sweep folder")
    result = call(evaluate.main, capsys, "--run", str(tmp_path), "--ensemble-top", "3", "--reports", str(tmp_path))
    assert_one_line_error(result, "has no trials.parquet: is it a finished sweep folder?")
    result = call(export.main, capsys, "--checkpoint", "a.pt", "--checkpoint", "b.pt", "--output", str(tmp_path))
    assert_one_line_error(result, "pass one --checkpoint or --run, or add --ensemble")
    assert not (tmp_path / "r").exists()


def test_the_ensemble_is_the_mean_of_its_members_and_one_more_model_in_the_comparison(
    tiny_run, tiny_ann, tmp_path, capsys
):
    runs = [tiny_run[2].run_dir, tiny_ann.run_dir]
    args = ["--run", runs[0], "--run", runs[1], "--ensemble", "--reports", str(tmp_path), "--run-id", "e"]
    result = call(evaluate.main, capsys, *args, "--actors", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("e-tiny", "e-tiny-ann", "e-ensemble"):
        assert {p.name for p in (tmp_path / name).iterdir()} == REPORT_FILES

    preds = pd.read_parquet(tmp_path / "e-ensemble" / "predictions.parquet")
    arrays = data.load("mnist")
    mean = mean_probabilities([tiny_run[2].best_checkpoint, tiny_ann.best_checkpoint], arrays.test_x)
    assert (preds["index"].to_numpy() == np.arange(len(mean))).all()
    assert np.abs(preds["confidence"].to_numpy() - mean.max(1)).max() < TOLERANCE
    clear = np.sort(mean, 1)[:, -1] - np.sort(mean, 1)[:, -2] > TOLERANCE  # no near-tie between the top two
    assert (preds["predicted"].to_numpy()[clear] == mean.argmax(1)[clear]).all()

    metrics = pd.read_parquet(tmp_path / "e-ensemble" / "metrics.parquet").iloc[0]
    loss = -np.log(mean[np.arange(len(mean)), arrays.test_y]).mean()
    assert abs(metrics["loss"] - loss) < TOLERANCE and metrics["accuracy"] == preds["correct"].mean()
    assert metrics["model"] == "ensemble of cnn+ann" and metrics["checkpoint"] == " + ".join(
        [tiny_run[2].best_checkpoint, tiny_ann.best_checkpoint]
    )
    table = pd.read_parquet(tmp_path / "compare-e" / "comparison.parquet")
    assert table["run_id"].tolist() == ["e-tiny", "e-tiny-ann", "e-ensemble"]
    cnn, ann, ens = (pd.read_parquet(tmp_path / n / "predictions.parquet")["correct"].to_numpy() for n in table.run_id)
    assert table["right_only_here"].iloc[2] == (ens & ~cnn & ~ann).sum()  # what the ensemble alone gets right
    assert table["wrong_only_here"].iloc[2] == (~ens & cnn & ann).sum()
    history = pd.read_parquet(tmp_path / "history.parquet")
    assert sorted(history["run_id"]) == ["e-ensemble", "e-tiny", "e-tiny-ann"]


def test_a_sweep_of_seeds_then_its_top_trials_by_validation_are_the_ensemble(ray_session, tmp_path, capsys):
    """`jobs/tune.py --seeds 2`, then `jobs/evaluate.py --run <sweep> --ensemble-top 2`: two commands."""
    tiny = ["--train-limit", "1024", "--val-size", "512", "--batch-size", "64", "--no-augment", "--epochs", "2"]
    result = call(tune.main, capsys, "--seeds", "2", *tiny, "--output", str(tmp_path), "--name", "seeds")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "seeds 0-1, every trial to the end" in result.stdout
    trials = pd.read_parquet(tmp_path / "seeds" / "trials.parquet")
    assert sorted(trials["seed"]) == [0, 1] and (trials["epochs_completed"] == 2).all()
    assert not trials["stopped_early"].any()

    args = ["--run", str(tmp_path / "seeds"), "--ensemble-top", "2", "--reports", str(tmp_path / "r"), "--run-id", "s"]
    result = call(evaluate.main, capsys, *args, "--actors", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    members = pd.read_parquet(tmp_path / "r" / "s-ensemble" / "metrics.parquet")["checkpoint"].iloc[0].split(" + ")
    best = trials.sort_values(["best_val_acc", "trial_id"], ascending=[False, True])
    assert [Path(m).parent.parent.name for m in members] == best["trial_id"].tolist()
    table = pd.read_parquet(tmp_path / "r" / "compare-s" / "comparison.parquet")
    assert len(table) == 3 and table["model"].iloc[2] == "ensemble of cnn+cnn"


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_an_exported_ensemble_returns_the_log_of_its_members_mean_probability(tmp_path, capsys, fmt):
    from tests.test_export import make_checkpoint

    arrays = data.load("mnist")
    for name in ("cnn", "ann"):
        (tmp_path / name).mkdir()
    members = [make_checkpoint(tmp_path / name, arrays, name) for name in ("cnn", "ann")]
    args = ["--checkpoint", members[0], "--checkpoint", members[1], "--ensemble", "--format", fmt]
    result = call(export.main, capsys, *args, "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    images = arrays.test_x[:512]
    pixels = images[:, None].astype(np.float32)
    if fmt == "pt2":
        logits = torch.export.load(tmp_path / "out" / "model.pt2").module()(torch.from_numpy(pixels)).detach().numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"))
        logits = session.run(["logits"], {"images": pixels})[0]
    assert np.abs(np.exp(logits.astype(np.float64)) - mean_probabilities(members, images)).max() < TOLERANCE
