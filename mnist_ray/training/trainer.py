"""Driver side of a training run: check the layout, share the data, run the TorchTrainer, write reports.

The same :func:`make_trainer` builds the trainer for the train job and for every Tune trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer

from mnist_ray import data
from mnist_ray.errors import ConfigError, ResourceError
from mnist_ray.files import capacity, publishing, storage
from mnist_ray.files.folders import RAY_CHECKPOINT_PREFIX, RunFolder
from mnist_ray.ray_workarounds.placement_groups import free_orphaned_placement_groups
from mnist_ray.ray_workarounds.rendezvous import LoopbackTorchConfig
from mnist_ray.reports import plots, tracking
from mnist_ray.settings.config import RunOptions, TrainConfig
from mnist_ray.settings.rules import parse_json_object
from mnist_ray.training import checkpoints
from mnist_ray.training.progress import fit_with_progress
from mnist_ray.training.worker import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutputs:
    """Files (paths or URIs) a finished run leaves in ``<output>/<name>/`` and its best validation metrics."""

    run_dir: str
    history: str
    curves: str
    config: str
    best_checkpoint: str
    best_metrics: dict[str, Any]
    mlflow_run_id: str | None = None


def check_fits(cfg: TrainConfig, trials: int = 1) -> None:
    """Fail at once (instead of pending forever) when ``trials`` runs of ``cfg`` cannot be placed."""
    total = ray.cluster_resources()
    node_cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]]
    need_cpu = cfg.num_workers * cfg.cpus_per_worker * trials
    if cfg.cpus_per_worker > max(node_cpus, default=0):
        raise ResourceError(
            f"no node has {cfg.cpus_per_worker} CPUs for one worker (largest: {max(node_cpus, default=0):g}); "
            "lower --cpus-per-worker"
        )
    if need_cpu > total.get("CPU", 0):
        fit = int(total.get("CPU", 0) // cfg.cpus_per_worker)
        raise ResourceError(
            f"{cfg.num_workers} workers x {cfg.cpus_per_worker} CPU need {need_cpu} CPUs but the cluster "
            f"has {total.get('CPU', 0):g}: use --num-workers {max(fit // trials, 1)} or fewer"
        )
    need_gpu = cfg.num_workers * cfg.gpus_per_worker * trials
    if cfg.use_gpu and need_gpu > total.get("GPU", 0):
        raise ResourceError(
            f"--use-gpu needs {need_gpu:g} GPU{'' if need_gpu == 1 else 's'} ({cfg.gpus_per_worker:g} per worker) "
            "but the cluster has "
            f"{total.get('GPU', 0):g}: lower --num-workers or --gpus-per-worker, or drop --use-gpu"
        )


def put_data(cfg: TrainConfig, arrays: data.Arrays) -> dict[str, tuple]:
    """Place the train/validation splits of the parsed ``arrays`` in the object store."""
    train_idx, val_idx = data.split_train_val(len(arrays.train_x), cfg.val_size, cfg.seed, cfg.train_limit)
    return {
        "train": (ray.put(arrays.train_x[train_idx]), ray.put(arrays.train_y[train_idx])),
        "val": (ray.put(arrays.train_x[val_idx]), ray.put(arrays.train_y[val_idx])),
    }


def make_trainer(
    cfg: TrainConfig,
    opts: RunOptions,
    data_refs: dict[str, tuple],
    callbacks: list[UserCallback] | None = None,
    mlflow: tracking.Run | None = None,
) -> TorchTrainer:
    """A TorchTrainer for ``cfg`` that keeps the best checkpoints by validation accuracy (rank 0 logs to ``mlflow``)."""
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {})}
    backend = None if cfg.ddp_backend == "auto" else cfg.ddp_backend
    tracked = {"mlflow": dataclasses.asdict(mlflow)} if mlflow else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), **data_refs, **tracked},
        torch_config=LoopbackTorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=opts.name,
            storage_path=opts.folder.storage_root,
            checkpoint_config=CheckpointConfig(
                num_to_keep=opts.keep_checkpoints, checkpoint_score_attribute="val_acc", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=opts.max_failures),
            callbacks=callbacks,
        ),
    )


def check_storage(opts: RunOptions) -> None:
    """On a multi-node cluster, checkpoints need storage every node reaches; a driver-local default is not that."""
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if nodes > 1 and opts.storage_path is None and not storage.is_uri(opts.output):
        raise ConfigError(
            f"this Ray cluster has {nodes} nodes: put the run on storage every node reaches, "
            "--output s3://bucket/prefix, or --storage-path on a shared filesystem"
        )


def previous_config(run: RunFolder) -> TrainConfig | None:
    """The config an existing run was started with (its config.json), or None for a new run."""
    if not storage.is_file(run.config):
        return None
    try:
        return TrainConfig.from_dict(parse_json_object(storage.read_text(run.config), run.config))
    except (ConfigError, UnicodeDecodeError, TypeError) as exc:
        raise ConfigError(f"{run.config} is damaged ({exc}): pass a new --name or delete {run.path}") from None


def check_resume(cfg: TrainConfig, run: RunFolder) -> None:
    """Refuse to resume a run under a name that was trained with a different model, data or layout."""
    previous = previous_config(run)
    if previous is None:
        return
    for key in ("model", "dataset", "num_workers", "batch_size", "seed"):
        if getattr(previous, key) != getattr(cfg, key):
            raise ConfigError(
                f"run {run.path} exists with {key}={getattr(previous, key)!r}, not "
                f"{getattr(cfg, key)!r}: pass a new --name to start a fresh run"
            )


def preflight(cfg: TrainConfig, opts: RunOptions) -> data.Arrays:
    """Every check of a run that needs no Ray: resume compatibility, data files, writable output with room.

    Returns the parsed, verified arrays, so bad data files fail before any resources are used.
    """
    check_resume(cfg, opts.folder)
    arrays = data.load(cfg.dataset, opts.data_dir)
    capacity.check_writable(opts.output, "--output")
    if opts.storage_path:
        capacity.check_writable(opts.storage_path, "--storage-path")
    flag = "--storage-path" if opts.storage_path else "--output"
    capacity.check_space(opts.folder.checkpoints, space_needed(cfg, opts), flag)
    return arrays


def space_needed(cfg: TrainConfig, opts: RunOptions) -> int:
    """Bytes a run still needs where its checkpoints go: a checkpoint x (kept + the latest + the best's copy), less
    the checkpoints already there (a resumed run replaces them), and room for history and curves."""
    size = checkpoints.estimate_bytes(cfg)
    present = sum(1 for d in storage.list_dirs(opts.folder.checkpoints) if d.startswith(RAY_CHECKPOINT_PREFIX))
    return max(1, opts.keep_checkpoints + 2 - present) * size + 256_000


def train(
    cfg: TrainConfig,
    opts: RunOptions,
    on_epoch: Callable[[dict], None] = lambda m: None,
    arrays: data.Arrays | None = None,
) -> TrainOutputs:
    """Run (or resume) training for ``cfg`` and write its outputs; Ray must already be initialised.

    Jobs call :func:`preflight` before Ray starts and pass its ``arrays``; without them it runs here.
    """
    arrays = arrays if arrays is not None else preflight(cfg, opts)
    check_storage(opts)
    if not opts.wait_for_resources:
        check_fits(cfg)
    refs = put_data(cfg, arrays)
    storage.write_text(opts.folder.config, json.dumps(cfg.to_dict(), indent=2) + "\n")
    run = tracking.start_training(cfg, opts)  # None unless --mlflow-uri
    with tracking.ended(run):
        try:
            result = fit_with_progress(lambda cbs: make_trainer(cfg, opts, refs, cbs, run), on_epoch, opts.max_failures)
        except capacity.DiskFull:
            free_orphaned_placement_groups(settle_s=1.0, wait_s=10.0)  # the killed run's, if the API answers
            need = space_needed(cfg, opts)
            raise capacity.disk_full(
                opts.folder.checkpoints, need, "free some space; the same command resumes"
            ) from None
        if result.error:
            raise result.error
        prune_checkpoints(result, opts.folder.checkpoints)
        return tracking.log_training(run, write_outputs(result, opts.folder, cfg))


def prune_checkpoints(result, folder: str) -> list[str]:
    """Delete checkpoint folders Ray Train no longer tracks (left by an interrupted run), keeping
    the best ``--keep-checkpoints`` and the latest; returns the names removed."""
    keep = {Path(c.path).name for c, _ in result.best_checkpoints} | {Path(result.checkpoint.path).name}
    orphans = [d for d in storage.list_dirs(folder) if d.startswith(RAY_CHECKPOINT_PREFIX) and d not in keep]
    for name in orphans:
        publishing.remove_dir(storage.join(folder, name))
    return orphans


def write_outputs(result, run: RunFolder, cfg: TrainConfig) -> TrainOutputs:
    """The history and its curves from the latest checkpoint, and a copy of the best checkpoint."""
    with result.checkpoint.as_directory() as folder:
        history = pd.DataFrame(checkpoints.load(folder)["history"])
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1]["val_acc"])
    with tempfile.TemporaryDirectory(prefix="mnist-ray-out") as tmp:
        local = RunFolder(tmp, tmp)
        history.to_parquet(local.history, index=False)
        plots.plot_curves(history, local.curves, title=f"{cfg.model} on {cfg.dataset}")
        storage.upload_file(Path(local.history), run.history)
        storage.upload_file(Path(local.curves), run.curves)
    return TrainOutputs(
        run_dir=run.path,
        history=run.history,
        curves=run.curves,
        config=run.config,
        best_checkpoint=checkpoints.publish_best(best_ckpt, run),
        best_metrics=dict(best_metrics),
    )


def progress_printer(cfg: TrainConfig, emit: Callable[[str], None] = print) -> Callable[[dict], None]:
    """An ``on_epoch`` callback that prints one line per epoch with an ETA."""
    started = time.perf_counter()
    seen: list[float] = []

    def on_epoch(m: dict) -> None:
        seen.append(m["epoch_s"])
        eta = (cfg.epochs - m["epoch"]) * sum(seen) / len(seen)
        emit(
            f"epoch {m['epoch']:>3}/{cfg.epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.2%}  "
            f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.2%}  lr {m['lr']:.2e}  "
            f"{m['images_per_s']:,.0f} img/s  {m['epoch_s']:.1f}s  elapsed {time.perf_counter() - started:.0f}s  "
            f"ETA {eta:.0f}s"
        )

    return on_epoch
