"""Experiment tracking in MLflow, only when a tracking URI is given (``--mlflow-uri`` or ``$MLFLOW_TRACKING_URI``).

A training run is one MLflow run (experiment ``mnist_ray``) that the driver creates, records in
``<run>/tracking.json`` (so a resume and later evaluations log into it) and fills with its outputs; rank 0 logs
each epoch through Ray's ``setup_mlflow``. A sweep is an experiment of its own: Tune's ``MLflowLoggerCallback``
logs each trial, and a run named after the sweep holds its reports. An evaluation logs into the run it scored.
Without a URI nothing here runs and ``mlflow`` is never imported. The README's tracking section tables it all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mnist_ray.files import publishing, storage
from mnist_ray.files.folders import BEST_CHECKPOINT, RunFolder, run_of
from mnist_ray.reports import mlflow_store

if TYPE_CHECKING:  # the trainer and the sweep import this module
    from mnist_ray.settings.config import RunOptions, TrainConfig
    from mnist_ray.training.sweep import SweepResult
    from mnist_ray.training.trainer import TrainOutputs

EXPERIMENT = "mnist_ray"
"""The experiment of training runs and of evaluations of checkpoints no tracked run made."""
TEST_METRICS = ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1")


@dataclasses.dataclass(frozen=True)
class Run:
    """An MLflow run this project logs into: the store, the experiment and the run."""

    uri: str
    experiment_id: str
    run_id: str


def recorded_run(uri: str, folder: RunFolder) -> Run | None:
    """The MLflow run the run ``folder`` recorded in this store, if it is still there (damaged: none)."""
    file = folder.tracking
    try:
        run = Run(**json.loads(storage.read_text(file))) if storage.is_file(file) else None
        if run is not None and run.uri == uri:
            mlflow_store.client(uri).get_run(run.run_id)
            return run
    except Exception:  # noqa: BLE001 - a damaged record, or a run deleted from the store: a new run is made
        pass
    return None


def _new_run(
    uri: str, experiment_name: str, name: str, tags: dict[str, str], record_in: RunFolder | None = None
) -> Run:
    """Create an MLflow run; with ``record_in``, record it in that run folder."""
    experiment_id = mlflow_store.experiment(uri, experiment_name)
    info = mlflow_store.client(uri).create_run(experiment_id, run_name=name, tags=tags).info
    run = Run(uri, experiment_id, info.run_id)
    if record_in:
        storage.write_text(record_in.tracking, json.dumps(dataclasses.asdict(run), indent=2) + "\n")
    return run


def log_metrics(run: Run, metrics: dict[str, Any]) -> None:
    """Log single figures (step 0) in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    mlflow_store.client(run.uri).log_batch(run.run_id, metrics=batch)


def log_params(run: Run, params: dict[str, Any]) -> None:
    """Log ``params``; a resumed run keeps its first values (MLflow's are immutable): changed ones become tags."""
    from mlflow.entities import Param, RunTag

    client = mlflow_store.client(run.uri)
    logged = client.get_run(run.run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"resumed_with.{k}", str(v)) for k, v in params.items() if k in logged and logged[k] != str(v)]
    client.log_batch(run.run_id, params=new, tags=changed)


def start_training(cfg: TrainConfig, opts: RunOptions) -> Run | None:
    """The MLflow run of the training run ``opts`` names (the recorded one when resuming), with its parameters."""
    if not opts.mlflow_uri:
        return None
    mlflow_store.check_nodes(opts.mlflow_uri)
    run = recorded_run(opts.mlflow_uri, opts.folder)
    if run is None:
        tags = {"mnist_ray.kind": "train", "mnist_ray.run_dir": opts.folder.path}
        run = _new_run(opts.mlflow_uri, EXPERIMENT, opts.name, tags, opts.folder)
    log_params(run, cfg.to_dict())
    return run


def worker_logger(run: dict[str, str] | None, rank: int) -> Any:
    """On rank 0 of a tracked run: the ``mlflow`` module, its active run the driver's; else None.

    Ray's ``setup_mlflow`` works under Train V2 (it reads the worker's rank from ``ray.train.get_context``) but
    always starts a run of its own; MLflow's documented ``MLFLOW_RUN_ID`` makes that start resume the driver's run
    instead, so a resumed or restarted worker group logs into the same run.
    """
    if not run or rank != 0:
        return None
    os.environ["MLFLOW_RUN_ID"] = run["run_id"]  # consumed by mlflow.start_run
    from ray.air.integrations.mlflow import setup_mlflow

    return setup_mlflow(
        tracking_uri=run["uri"], experiment_id=run["experiment_id"], create_experiment_if_not_exists=False
    )


@contextlib.contextmanager
def ended(run: Run | None) -> Iterator[None]:
    """Mark ``run`` FINISHED when the block ends, FAILED on an error, KILLED on Ctrl-C."""
    if run is None:
        yield
        return
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow_store.client(run.uri).set_terminated(run.run_id, status)


def log_files(run: Run, files: dict[str, str]) -> None:
    """Log each file (a path or URI) as an artifact under its folder in ``files``."""
    client = mlflow_store.client(run.uri)
    for path, folder in files.items():
        with storage.local_copy(path) as local:
            client.log_artifact(run.run_id, str(local), artifact_path=folder or None)


def log_training(run: Run | None, out: TrainOutputs) -> TrainOutputs:
    """Log a finished run's outputs and best validation figures; ``out`` with its MLflow run id."""
    if run is None:
        return out
    log_metrics(run, {f"best_{k}": out.best_metrics[k] for k in ("val_acc", "val_loss", "epoch")})
    log_files(run, {out.curves: "", out.history: "", out.config: "", out.best_checkpoint: BEST_CHECKPOINT})
    return dataclasses.replace(out, mlflow_run_id=run.run_id)


def sweep_experiment(name: str) -> str:
    """The MLflow experiment of sweep ``name``."""
    return f"{EXPERIMENT}-sweep-{name}"


def tune_callbacks(uri: str | None, name: str) -> list:
    """Ray Tune's ``MLflowLoggerCallback`` for sweep ``name`` (one MLflow run per trial); none without a URI."""
    if not uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    mlflow_store.experiment(uri, sweep_experiment(name))  # created here, so its artifacts land beside a SQLite store
    tags = {"mnist_ray.kind": "trial", "mnist_ray.sweep": name}
    callback = MLflowLoggerCallback(uri, experiment_name=sweep_experiment(name), tags=tags, save_artifact=True)
    return [callback]


def log_sweep(opts: RunOptions, result: SweepResult) -> str | None:
    """A run named after the sweep, in its experiment: best config, headline figures, reports, best checkpoint."""
    if not opts.mlflow_uri:
        return None
    tags = {"mnist_ray.kind": "sweep", "mnist_ray.run_dir": opts.folder.path, "mnist_ray.best_trial": result.best_trial}
    run = _new_run(opts.mlflow_uri, sweep_experiment(opts.name), opts.name, tags, opts.folder)
    with ended(run):
        log_params(run, json.loads(storage.read_text(result.best_config)))
        log_metrics(run, {k: getattr(result, k) for k in ("best_val_acc", "wall_s", "trials_run", "stopped_early")})
        files = {result.trials: "", result.plot: "", result.best_config: ""}
        log_files(run, {**files, result.best_checkpoint: BEST_CHECKPOINT})
    return run.run_id


def log_evaluation(uri: str | None, report_dir: str, metrics: dict[str, Any]) -> str | None:
    """Log an evaluation's test metrics and report files into the scored run's MLflow run, or a new one.

    Returns the MLflow run id (None without a URI). The report's files go under ``evaluation/<report id>/``.
    """
    if not uri:
        return None
    report_id = metrics["run_id"]
    run = recorded_run(uri, run_of(metrics["checkpoint"]))
    own = run is None
    if own:
        tags = {"mnist_ray.kind": "evaluation", "mnist_ray.report": report_dir}
        run = _new_run(uri, EXPERIMENT, f"evaluate-{report_id}", tags)
        log_params(run, {k: metrics[k] for k in ("checkpoint", "model", "dataset")})
    with ended(run) if own else contextlib.nullcontext():
        log_metrics(run, {f"test_{k}": metrics[k] for k in TEST_METRICS})
        log_files(run, report_files(report_dir, f"evaluation/{report_id}"))
    return run.run_id


def report_files(report_dir: str, under: str) -> dict[str, str]:
    """Every file of a complete report (its manifest's list, and the manifest), each with its artifact folder."""
    listed = json.loads(storage.read_text(storage.join(report_dir, publishing.MANIFEST)))["files"]
    return {storage.join(report_dir, f): "/".join([under, *f.split("/")[:-1]]) for f in [*listed, publishing.MANIFEST]}
