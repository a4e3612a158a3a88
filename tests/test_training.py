"""A real 2-worker Ray Train run on an MNIST subset: outputs, falling loss, checkpoints, what a resume refuses.

A second run of the same config (same metrics for the same seed) and its resume by name are checked by
tests/test_tracking.py, through the train job with MLflow on: one scenario, one Ray Train start less.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mnist_ray.errors import ConfigError, ResourceError
from mnist_ray.settings.config import RunOptions, TrainConfig
from mnist_ray.training import checkpoints, optim, step, trainer
from tests.helpers import alive_actors

pytestmark = pytest.mark.usefixtures("ray_session")


def test_run_writes_outputs_with_falling_loss(tiny_run):
    cfg, opts, out, epochs = tiny_run
    history = pd.read_parquet(out.history)
    assert history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "images_per_s"} <= set(history)
    assert history["train_loss"].iloc[1] < history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[1] < history["val_loss"].iloc[0]
    assert history["val_acc"].iloc[-1] > 0.8
    assert Path(out.curves).stat().st_size > 10_000 and Path(out.config).is_file()
    assert [m["epoch"] for m in epochs] == [1, 2]  # the driver saw one progress report per epoch


def test_best_checkpoint_loads_safely_and_rebuilds_the_model(tiny_run):
    cfg, _, out, _ = tiny_run
    raw = torch.load(out.best_checkpoint, weights_only=True)
    assert raw["model"] == "cnn" and raw["config"] == cfg.to_dict()
    model = checkpoints.build_model(checkpoints.load(out.best_checkpoint, model="cnn", dataset="mnist"))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert out.best_metrics["val_acc"] == max(pd.read_parquet(out.history)["val_acc"])


def test_resume_with_another_model_is_refused(tiny_run):
    cfg, opts, _, _ = tiny_run
    with pytest.raises(ConfigError, match="exists with model='cnn', not 'ann'.*new --name"):
        trainer.train(dataclasses.replace(cfg, model="ann"), opts)


def test_layout_larger_than_cluster_fails_fast():
    with pytest.raises(ResourceError, match="need 8 CPUs but the cluster has 2: use --num-workers 2"):
        trainer.check_fits(TrainConfig(num_workers=8, batch_size=64))
    with pytest.raises(ResourceError, match="--use-gpu needs 2 GPUs"):
        trainer.check_fits(TrainConfig(use_gpu=True, num_workers=2))
    with pytest.raises(ResourceError, match="--use-gpu needs 1 GPU \\(0.5 per worker\\)"):
        trainer.check_fits(TrainConfig(use_gpu=True, num_workers=2, gpus_per_worker=0.5, ddp_backend="gloo"))


def test_onecycle_schedule_warms_up_then_decays():
    lrs = [optim.lr_at(s, 100, 0.01, "onecycle") for s in range(101)]
    assert lrs[0] == pytest.approx(0.01 / 25) and max(lrs) == pytest.approx(0.01)
    assert lrs.index(max(lrs)) == 25 and lrs[-1] < 1e-5
    assert optim.lr_at(50, 100, 0.01, "none") == 0.01


def test_unknown_optimizer_or_schedule_fails_instead_of_a_default():
    from types import SimpleNamespace

    with pytest.raises(ConfigError, match="unknown schedule 'step'; valid: none, onecycle, cosine"):
        optim.lr_at(1, 10, 0.1, "step")
    unchecked = SimpleNamespace(optimizer="lion", weight_decay=0.0, lr=0.1, momentum=0.9)  # TrainConfig checks too
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
        optim.build_optimizer(torch.nn.Linear(2, 2), unchecked)


def test_a_failing_progress_callback_leaks_no_thread_or_actor(tiny_run, tmp_path):
    """The callback's error surfaces after fit() ends; the fit thread is joined and the queue actor gone."""
    import threading

    def boom(metrics: dict) -> None:
        raise RuntimeError("progress display broke")

    cfg = dataclasses.replace(tiny_run[0], epochs=1)
    with pytest.raises(RuntimeError, match="progress display broke"):
        trainer.train(cfg, RunOptions(name="boom", output=str(tmp_path)), on_epoch=boom)
    assert not [t for t in threading.enumerate() if t.name == "mnist-ray-fit"]
    deadline = time.time() + 15  # ray.kill is asynchronous
    while alive_actors("_QueueActor"):
        assert time.time() < deadline, "the progress queue actor is still alive"
        time.sleep(0.5)


def test_augmentation_keeps_shape_and_background():
    x = torch.full((4, 1, 28, 28), -0.1307 / 0.3081)
    out = step.random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.allclose(out, x, atol=1e-5)  # a blank image stays blank


def test_checkpoints_ray_no_longer_tracks_are_pruned(tiny_run, tmp_path):
    """An interrupted run can leave checkpoint folders Ray Train never registered; the run keeps only its own."""
    import shutil
    from types import SimpleNamespace

    storage_dir = Path(tiny_run[1].folder.checkpoints)
    copy = tmp_path / "run"
    shutil.copytree(storage_dir, copy)
    kept = sorted(d.name for d in copy.glob("checkpoint_epoch_*"))
    (copy / "checkpoint_epoch_099").mkdir()  # persisted by workers, never registered by the controller
    tracked = [(SimpleNamespace(path=str(copy / name)), {}) for name in kept]
    result = SimpleNamespace(best_checkpoints=tracked, checkpoint=tracked[-1][0])
    assert trainer.prune_checkpoints(result, str(copy)) == ["checkpoint_epoch_099"]
    assert sorted(d.name for d in copy.glob("checkpoint_epoch_*")) == kept
