"""Driver side of a training run: check the layout, share the data, run the TorchTrainer, write reports.

The same :func:`make_trainer` builds the trainer for the train job and for every Tune trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import threading
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
from mnist_ray.ray_workarounds.placement_groups import free_orphaned_placement_groups
from mnist_ray.ray_workarounds.rendezvous import LoopbackTorchConfig
from mnist_ray.reports import plots, tracking
from mnist_ray.settings.config import RunOptions, TrainConfig, parse_json_object
from mnist_ray.training import checkpoints
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
            storage_path=opts.storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=opts.keep_checkpoints, checkpoint_score_attribute="val_acc", checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=opts.max_failures),
            callbacks=callbacks,
        ),
    )


class _QueueCallback(UserCallback):
    """Forwards rank 0's metrics, and one line per lost worker group, from the Train controller to the driver."""

    def __init__(self, queue, max_failures: int, acks=None) -> None:
        self.queue, self.max_failures, self.epoch, self.failures = queue, max_failures, 0, 0
        self.acks = acks

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not self.epoch:  # the first report: the driver learns this controller, to end the run on a stop
            self.queue.put_nowait({"controller": _current_actor()})
        self.epoch = metrics[0].get("epoch", self.epoch)
        path = {"checkpoint_path": checkpoint.path} if checkpoint else {}  # what a sweep's trial results carry
        self.queue.put_nowait({**metrics[0], **path})
        if self.acks is not None:  # hold the run until the driver has handled this report (see fit_with_progress)
            self.acks.get(block=True)

    def after_exception(self, run_context, worker_exceptions) -> None:
        full = next((e for e in worker_exceptions.values() if capacity.is_disk_full(e)), None)
        if full is not None:  # restarting cannot make space: the driver ends the run (kills this controller)
            detail = " ".join(str(full).split())[-300:]
            self.queue.put_nowait({"disk_full": detail, "controller": _current_actor()})
            return
        self.failures += 1
        ranks = ", ".join(str(r) for r in sorted(worker_exceptions))
        first = next(iter(worker_exceptions.values()), None)
        reason = f"{type(first).__name__}: {str(first).splitlines()[0][:120]}" if first else "no error detail"
        then = f"restarting from the epoch {self.epoch} checkpoint" if self.epoch else "restarting from the start"
        if self.failures > self.max_failures:
            then = f"giving up: --max-failures {self.max_failures} restarts used"
        else:
            then += f" (restart {self.failures} of --max-failures {self.max_failures})"
        self.queue.put_nowait({"event": f"lost worker rank {ranks} ({reason}); {then}"})


def _current_actor():
    """This actor's handle (the Train controller's, in a callback), or None outside an actor."""
    try:
        return ray.get_runtime_context().current_actor
    except Exception:  # noqa: BLE001 - not in an actor
        return None


@contextlib.contextmanager
def _ends_run_on_stop(box: dict):
    """On Ctrl-C or a stop signal, kill the run's Train controller (and so its workers) before the driver goes on:
    no epoch is trained, and no checkpoint written, after the job has said which epoch it resumes from. The same
    when Tune ends a trial from inside its report (``SystemExit``, e.g. stopped by ASHA): its CPUs are freed now."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if box.get("controller") is not None:
            with contextlib.suppress(Exception):
                ray.kill(box["controller"], no_restart=True)
        raise


def _handle_report(metrics: dict, on_epoch: Callable[[dict], None], box: dict) -> None:
    """Call ``on_epoch``, keeping its first error for after the fit (later reports are then skipped)."""
    if "callback_error" in box:
        return
    try:
        on_epoch(metrics)
    except Exception as exc:  # noqa: BLE001 - kept until fit ends, then raised
        box["callback_error"] = exc


def fit_with_progress(
    trainer_factory: Callable[[list[UserCallback]], TorchTrainer],
    on_epoch: Callable[[dict], None],
    max_failures: int,
    in_step: bool = False,
):
    """Run ``trainer.fit()`` in a thread while calling ``on_epoch`` on the driver for each report.

    The queue actors are always killed and the thread always joined; an error raised by ``on_epoch``
    does not abandon a running fit: it is raised once the fit has ended. A lost worker group is
    logged as one line (which rank, from which epoch it restarts, restart k of ``max_failures``).
    ``in_step``: the run waits at each report until ``on_epoch`` has returned (a Tune trial: Tune decides on an
    epoch before the next one is trained, so ASHA's stop never finds that epoch's checkpoint already replaced).
    """
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    acks = Queue(actor_options={"num_cpus": 0}) if in_step else None
    box: dict[str, Any] = {}
    try:
        trainer = trainer_factory([_QueueCallback(queue, max_failures, acks)])

        def run() -> None:
            try:
                box["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the driver thread below
                box["error"] = exc

        thread = threading.Thread(target=run, name="mnist-ray-fit", daemon=True)
        thread.start()
        while thread.is_alive() or not queue.empty():
            with contextlib.suppress(Empty), _ends_run_on_stop(box):
                metrics = queue.get(timeout=0.5)
                if "controller" in metrics and len(metrics) == 1:
                    box["controller"] = metrics["controller"]
                elif "disk_full" in metrics:
                    box.setdefault("disk_full", metrics["disk_full"])
                    if metrics["controller"] is not None:  # no worker-group restart: fail at once
                        ray.kill(metrics["controller"], no_restart=True)
                elif "event" in metrics:
                    log.warning(metrics["event"])
                else:
                    _handle_report(metrics, on_epoch, box)
                    if acks is not None:  # the run waits for this, handled or not
                        acks.put_nowait(True)
        thread.join()
    finally:
        ray.kill(queue.actor)
        if acks is not None:
            ray.kill(acks.actor)
    if "disk_full" in box:
        raise capacity.DiskFull(box["disk_full"])
    if "error" in box:
        raise box["error"]
    if "callback_error" in box:
        raise box["callback_error"]
    return box["result"]


def check_storage(opts: RunOptions) -> None:
    """On a multi-node cluster, checkpoints need storage every node reaches; a driver-local default is not that."""
    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if nodes > 1 and opts.storage_path is None and not storage.is_uri(opts.output):
        raise ConfigError(
            f"this Ray cluster has {nodes} nodes: put the run on storage every node reaches, "
            "--output s3://bucket/prefix, or --storage-path on a shared filesystem"
        )


def previous_config(run_dir: str) -> TrainConfig | None:
    """The config an existing run was started with (its config.json), or None for a new run."""
    file = storage.join(run_dir, "config.json")
    if not storage.is_file(file):
        return None
    try:
        return TrainConfig.from_dict(parse_json_object(storage.read_text(file), str(file)))
    except (ConfigError, UnicodeDecodeError, TypeError) as exc:
        raise ConfigError(f"{file} is damaged ({exc}): pass a new --name or delete {run_dir}") from None


def check_resume(cfg: TrainConfig, run_dir: str) -> None:
    """Refuse to resume a run under a name that was trained with a different model, data or layout."""
    previous = previous_config(run_dir)
    if previous is None:
        return
    for key in ("model", "dataset", "num_workers", "batch_size", "seed"):
        if getattr(previous, key) != getattr(cfg, key):
            raise ConfigError(
                f"run {run_dir} exists with {key}={getattr(previous, key)!r}, not "
                f"{getattr(cfg, key)!r}: pass a new --name to start a fresh run"
            )


def preflight(cfg: TrainConfig, opts: RunOptions) -> data.Arrays:
    """Every check of a run that needs no Ray: resume compatibility, data files, writable output with room.

    Returns the parsed, verified arrays, so bad data files fail before any resources are used.
    """
    check_resume(cfg, opts.run_dir)
    arrays = data.load(cfg.dataset, opts.data_dir)
    capacity.check_writable(opts.output, "--output")
    if opts.storage_path:
        capacity.check_writable(opts.storage_path, "--storage-path")
    flag = "--storage-path" if opts.storage_path else "--output"
    capacity.check_space(storage.join(opts.storage, opts.name), space_needed(cfg, opts), flag)
    return arrays


def space_needed(cfg: TrainConfig, opts: RunOptions) -> int:
    """Bytes a run still needs where its checkpoints go: a checkpoint x (kept + the latest + the best's copy), less
    the checkpoints already there (a resumed run replaces them), and room for history and curves."""
    size = checkpoints.estimate_bytes(cfg)
    folder = storage.join(opts.storage, opts.name)
    present = sum(1 for d in storage.list_dirs(folder) if d.startswith(checkpoints.RAY_DIR_PREFIX))
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
    storage.write_text(storage.join(opts.run_dir, "config.json"), json.dumps(cfg.to_dict(), indent=2) + "\n")
    run = tracking.start_training(cfg, opts)  # None unless --mlflow-uri
    with tracking.ended(run):
        try:
            result = fit_with_progress(lambda cbs: make_trainer(cfg, opts, refs, cbs, run), on_epoch, opts.max_failures)
        except capacity.DiskFull:
            free_orphaned_placement_groups(settle_s=1.0, wait_s=10.0)  # the killed run's, if the API answers
            folder = storage.join(opts.storage, opts.name)
            raise capacity.disk_full(
                folder, space_needed(cfg, opts), "free some space; the same command resumes"
            ) from None
        if result.error:
            raise result.error
        prune_checkpoints(result, storage.join(opts.storage, opts.name))
        return tracking.log_training(run, write_outputs(result, opts.run_dir, cfg))


def prune_checkpoints(result, folder: str) -> list[str]:
    """Delete checkpoint folders Ray Train no longer tracks (left by an interrupted run), keeping
    the best ``--keep-checkpoints`` and the latest; returns the names removed."""
    keep = {Path(c.path).name for c, _ in result.best_checkpoints} | {Path(result.checkpoint.path).name}
    orphans = [d for d in storage.list_dirs(folder) if d.startswith(checkpoints.RAY_DIR_PREFIX) and d not in keep]
    for name in orphans:
        publishing.remove_dir(storage.join(folder, name))
    return orphans


def write_outputs(result, run_dir: str, cfg: TrainConfig) -> TrainOutputs:
    """history.parquet and curves.png from the latest checkpoint, and a copy of the best checkpoint."""
    with result.checkpoint.as_directory() as folder:
        history = pd.DataFrame(checkpoints.load(folder)["history"])
    best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1]["val_acc"])
    with tempfile.TemporaryDirectory(prefix="mnist-ray-out") as tmp:
        history.to_parquet(Path(tmp) / "history.parquet", index=False)
        plots.plot_curves(history, Path(tmp) / "curves.png", title=f"{cfg.model} on {cfg.dataset}")
        for name in ("history.parquet", "curves.png"):
            storage.upload_file(Path(tmp) / name, storage.join(run_dir, name))
    return TrainOutputs(
        run_dir=run_dir,
        history=storage.join(run_dir, "history.parquet"),
        curves=storage.join(run_dir, "curves.png"),
        config=storage.join(run_dir, "config.json"),
        best_checkpoint=checkpoints.publish_best(best_ckpt, run_dir),
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
