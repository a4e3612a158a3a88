"""A real 2-worker Ray Train run on an MNIST subset: outputs, falling loss, checkpoints, resume."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from mnist_ray import checkpoints, runner, training
from mnist_ray.config import RunOptions, TrainConfig
from mnist_ray.errors import ConfigError, ResourceError

pytestmark = pytest.mark.usefixtures("ray_session")


def test_run_writes_outputs_with_falling_loss(tiny_run):
    cfg, opts, out, epochs = tiny_run
    history = pd.read_parquet(out.history)
    assert history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "images_per_s"} <= set(history)
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[1] < history["val_loss"].iloc[0]
    assert history["val_acc"].iloc[-1] > 0.8
    assert out.curves.stat().st_size > 10_000 and out.config.is_file()
    assert [m["epoch"] for m in epochs] == [1, 2]  # the driver saw one progress report per epoch


def test_best_checkpoint_loads_safely_and_rebuilds_the_model(tiny_run):
    cfg, _, out, _ = tiny_run
    raw = torch.load(out.best_checkpoint, weights_only=True)
    assert raw["model"] == "cnn" and raw["config"] == cfg.to_dict()
    model = checkpoints.build_model(checkpoints.load(out.best_checkpoint, model="cnn", dataset="mnist"))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert out.best_metrics["val_acc"] == max(pd.read_parquet(out.history)["val_acc"])


def test_same_name_resumes_from_last_checkpoint(tiny_run):
    cfg, opts, out, _ = tiny_run
    before = pd.read_parquet(out.history)
    seen: list[dict] = []
    resumed = runner.train(dataclasses.replace(cfg, epochs=3), opts, on_epoch=seen.append)
    after = pd.read_parquet(resumed.history)
    assert [m["epoch"] for m in seen] == [3]  # only the new epoch ran
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # earlier epochs kept exactly once, unchanged


def test_resume_with_another_model_is_refused(tiny_run):
    cfg, opts, _, _ = tiny_run
    with pytest.raises(ConfigError, match="exists with model='cnn', not 'ann'.*new --name"):
        runner.train(dataclasses.replace(cfg, model="ann"), opts)


def test_layout_larger_than_cluster_fails_fast():
    with pytest.raises(ResourceError, match="need 8 CPUs but the cluster has 2: use --num-workers 2"):
        runner.check_fits(TrainConfig(num_workers=8, batch_size=64))
    with pytest.raises(ResourceError, match="--use-gpu needs 2 GPUs"):
        runner.check_fits(TrainConfig(use_gpu=True))


def test_onecycle_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=0.01, schedule="onecycle")
    lrs = [training.lr_at(s, 100, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(0.01 / 25) and max(lrs) == pytest.approx(0.01)
    assert lrs.index(max(lrs)) == 25 and lrs[-1] < 1e-5
    assert training.lr_at(50, 100, TrainConfig(lr=0.01, schedule="none")) == 0.01


def test_augmentation_keeps_shape_and_background():
    x = torch.full((4, 1, 28, 28), -0.1307 / 0.3081)
    out = training.random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.allclose(out, x, atol=1e-5)  # a blank image stays blank


def test_same_seed_and_workers_give_the_same_metrics(tiny_run, tmp_path):
    cfg, _, out, _ = tiny_run
    again = runner.train(cfg, RunOptions(name="again", output=str(tmp_path)))
    first, second = pd.read_parquet(out.history), pd.read_parquet(again.history)
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    pd.testing.assert_frame_equal(first[cols].iloc[:2], second[cols])
