"""The training loop that runs on every Ray Train worker, shared by the train and tune jobs.

``train_loop_per_worker`` receives the config as a dict plus object-store references to the
uint8 train/validation arrays; each worker keeps only its shard, normalised once into tensors,
and trains it with :mod:`mnist_ray.training.step` (the same functions a plain loop without Ray calls).
``ray.train.report`` is the only place the loop talks to Ray; in a run tracked in MLflow, rank 0 also
logs each reported epoch there (:func:`mnist_ray.reports.tracking.worker_logger`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from mnist_ray import data
from mnist_ray.files.folders import checkpoint_dir_name
from mnist_ray.reports import tracking
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models
from mnist_ray.training.step import SpeedOptions, WorkerState, fit_epoch

PROFILE_ENV = "MNIST_RAY_PROFILE_DIR"
"""A folder: each worker profiles its second epoch with torch.profiler into ``<folder>/<name>.txt`` (bench/gpu)."""


def shard(
    x: np.ndarray,
    y: np.ndarray,
    rank: int,
    world: int,
    device: torch.device,
    equal: bool,
    stats: data.Normalization | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's slice (every world-th image) of uint8 images and labels, as tensors on ``device``.

    Images are normalised with ``stats`` (the dataset's; None: MNIST's).
    """
    n = (len(x) // world) * world if equal else len(x)  # equal shards keep DDP steps in lockstep
    idx = np.arange(rank, n, world)
    return data.normalize(x[idx], stats).to(device), torch.from_numpy(y[idx]).to(device)


@contextlib.contextmanager
def profiled(name: str, active: bool):
    """Profile the block with torch.profiler (CPU, and CUDA on a GPU) when ``$MNIST_RAY_PROFILE_DIR`` is set.

    Writes the operators sorted by self CPU time, then by self CUDA time, to ``<dir>/<name>.txt``: where a
    launch-bound step spends its host time, the same for the Ray Train worker and a plain loop.
    """
    folder = os.environ.get(PROFILE_ENV)
    if not (folder and active):
        yield
        return
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=25)]
    if cuda:
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=15))
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{name}.txt").write_text("\n".join(tables))


def _restore(model: nn.Module) -> tuple[int, list[dict[str, Any]], dict | None, dict | None]:
    """Load the latest checkpoint Ray Train hands us (after a restart or a resumed run), if any, into ``model``.

    Returns its epoch, history, optimizer state and, in a run with a moving average, the average's weights.
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, [], None, None
    with checkpoint.as_directory() as folder:
        state = checkpoints.load(folder)
    trained, average = checkpoints.resume_weights(state)
    model.load_state_dict(trained)
    return state["epoch"], state["history"], state["optimizer"], average


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train ``loop_config['config']`` on this worker's shard, reporting one checkpoint per epoch."""
    cfg = TrainConfig.from_dict(loop_config["config"])
    speed = SpeedOptions(channels_last=cfg.channels_last)  # the rest: the GPU recipe's (no-ops on a CPU)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    models.set_cpu_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    stats = data.DATASET_INFO[cfg.dataset].normalization  # checkpoints.save stores the same, for scoring
    train = shard(*ray.get(list(loop_config["train"])), rank, world, device, equal=True, stats=stats)
    val = shard(*ray.get(list(loop_config["val"])), rank, world, device, equal=False, stats=stats)

    model = models.build(cfg.model, cfg.dropout, seed=cfg.seed)
    start_epoch, history, optimizer_state, average_state = _restore(model)
    state = WorkerState.create(
        model,
        train,
        val,
        cfg,
        rank=rank,
        world=world,
        speed=speed,
        wrap=ray.train.torch.prepare_model,
        optimizer_state=optimizer_state,
        average_state=average_state,
    )
    mlflow = tracking.worker_logger(loop_config.get("mlflow"), rank)  # rank 0 of a tracked run: MLflow, else None

    for epoch in range(start_epoch, cfg.epochs):
        with profiled(f"ray_train_rank{rank}", active=epoch == start_epoch + 1):
            metrics = fit_epoch(state, epoch)
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                checkpoints.save(  # with the dataset's normalisation, the one used here
                    folder,
                    model=state.evaluated,
                    trained=state.model if state.average is not None else None,
                    optimizer=state.optimizer,
                    config=cfg.to_dict(),
                    epoch=epoch + 1,
                    history=history,
                )
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(epoch + 1))
        if mlflow:  # once its checkpoint is saved: a restarted worker group never logs an epoch twice
            mlflow.log_metrics(metrics, step=epoch + 1)
