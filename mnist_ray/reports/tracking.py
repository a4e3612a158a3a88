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
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mnist_ray.files import capacity, publishing, storage
from mnist_ray.errors import ConfigError

EXPERIMENT = "mnist_ray"
"""The experiment of training runs and of evaluations of checkpoints no tracked run made."""
RECORD = "tracking.json"
"""Beside a run's config.json: the MLflow store, experiment and run that the run logged to."""
ENV = "MLFLOW_TRACKING_URI"
INSTALL = "pip install '.[mlflow]'"
SERVERS = ("http", "https", "databricks", "postgresql", "mysql", "mssql")
"""Schemes of stores every node reaches (an MLflow server, Databricks, a database server), passed on unchanged."""
TEST_METRICS = ("accuracy", "loss", "macro_precision", "macro_recall", "macro_f1")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclasses.dataclass(frozen=True)
class Run:
    """An MLflow run this project logs into: the store, the experiment and the run."""

    uri: str
    experiment_id: str
    run_id: str


def resolve(uri: str | None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else "" (no tracking); local stores as absolute URIs.

    Absolute, because Ray workers and Tune callbacks do not run in the job's working directory.
    """
    uri = (uri or os.environ.get(ENV, "")).strip()
    scheme = _scheme(uri)
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"--mlflow-uri {uri}: name the database file, e.g. sqlite:///mlruns/mlflow.db")
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if scheme == "file" or (uri and not scheme):
        path = urlparse(uri).path if scheme else uri
        return Path(path).expanduser().resolve().as_uri()
    return uri


def _scheme(uri: str) -> str:
    """The lower-case scheme of ``uri``, "" for a plain path."""
    match = _SCHEME.match(uri)
    return match.group(1).lower().split("+")[0] if match else ""  # postgresql+psycopg2: postgresql


def local_folder(uri: str) -> Path | None:
    """The folder of a local store (a file store, or a SQLite database's folder); None for a server."""
    scheme = _scheme(uri)
    if scheme == "sqlite":
        return Path(uri[len("sqlite:///") :]).parent
    return Path(urlparse(uri).path) if scheme == "file" else None


def check(uri: str | None) -> str:
    """The resolved URI ("" without one), after proving it usable; run before Ray starts.

    MLflow must be installed, a local store writable and openable, a server's port reachable: any problem is
    one ConfigError naming --mlflow-uri and the fix.
    """
    uri = resolve(uri)
    if not uri:
        return ""
    scheme = _scheme(uri)
    if scheme not in ("sqlite", "file", *SERVERS):
        raise ConfigError(
            f"--mlflow-uri {uri}: unknown store scheme {scheme!r}: use sqlite:///path/mlflow.db or http://host:5000"
        )
    try:
        import mlflow

        if scheme == "sqlite":
            import alembic  # noqa: F401 - MLflow's SQL store needs both; mlflow-skinny alone lacks them
            import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--mlflow-uri needs MLflow ({exc.name} is not installed): {INSTALL}") from None
    folder = local_folder(uri)
    if folder is not None:
        capacity.check_writable(str(folder), "--mlflow-uri")
        _open(mlflow, uri)
    elif scheme in ("http", "https"):
        _reach(uri)
    return uri


def _open(mlflow: Any, uri: str) -> None:
    """Open a local store (creating its tables on first use); MLflow's refusal becomes one ConfigError."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # not "Creating initial MLflow database..."
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure to open the store is the user's URI
        text = " ".join(str(exc).split())
        if "MLFLOW_ALLOW_FILE_STORE" in text:
            text = "MLflow 3 refuses file stores (set MLFLOW_ALLOW_FILE_STORE=true to allow one)"
            db = f"sqlite:///{local_folder(uri)}/mlflow.db"
            raise ConfigError(f"--mlflow-uri {uri}: {text}: use a SQLite store, --mlflow-uri {db}") from None
        raise ConfigError(f"--mlflow-uri {uri}: cannot open the store ({text[:200]})") from None


def _reach(uri: str) -> None:
    """Fail at once on a tracking server nobody answers at (MLflow's own retries would take minutes)."""
    url = urlparse(uri)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--mlflow-uri {uri}: no MLflow server answers ({exc.strerror or exc})") from None


def _client(uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(uri)


def experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created if new; a SQLite store's artifacts go to ``mlartifacts/`` beside it.

    (MLflow's default for a SQLite store is ``./mlruns`` under the working directory of whichever process
    creates the experiment.)
    """
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    folder = local_folder(uri) if _scheme(uri) == "sqlite" else None
    location = (folder / "mlartifacts" / name).as_uri() if folder else None
    return client.create_experiment(name, artifact_location=location)


def check_nodes(uri: str) -> None:
    """A local store is on this machine's disk: refuse it when a training worker may run on another node."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if local_folder(uri) is not None and nodes > 1:
        raise ConfigError(
            f"--mlflow-uri {uri} is on this machine, but this Ray cluster has {nodes} nodes and rank 0 logs "
            "each epoch from its own node: use an MLflow server, --mlflow-uri http://host:5000"
        )


def recorded_run(uri: str, run_dir: str) -> Run | None:
    """The MLflow run ``<run_dir>/tracking.json`` records in this store, if it is still there (damaged: none)."""
    file = storage.join(run_dir, RECORD)
    try:
        run = Run(**json.loads(storage.read_text(file))) if storage.is_file(file) else None
        if run is not None and run.uri == uri:
            _client(uri).get_run(run.run_id)
            return run
    except Exception:  # noqa: BLE001 - a damaged record, or a run deleted from the store: a new run is made
        pass
    return None


def _new_run(uri: str, experiment_name: str, name: str, tags: dict[str, str], record_in: str | None = None) -> Run:
    """Create an MLflow run; with ``record_in``, record it in ``<record_in>/tracking.json``."""
    experiment_id = experiment(uri, experiment_name)
    info = _client(uri).create_run(experiment_id, run_name=name, tags=tags).info
    run = Run(uri, experiment_id, info.run_id)
    if record_in:
        storage.write_text(storage.join(record_in, RECORD), json.dumps(dataclasses.asdict(run), indent=2) + "\n")
    return run


def log_metrics(run: Run, metrics: dict[str, Any]) -> None:
    """Log single figures (step 0) in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _client(run.uri).log_batch(run.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_params(run: Run, params: dict[str, Any]) -> None:
    """Log ``params``; a resumed run keeps its first values (MLflow's are immutable): changed ones become tags."""
    from mlflow.entities import Param, RunTag

    client = _client(run.uri)
    logged = client.get_run(run.run_id).data.params
    new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
    changed = [RunTag(f"resumed_with.{k}", str(v)) for k, v in params.items() if k in logged and logged[k] != str(v)]
    client.log_batch(run.run_id, params=new, tags=changed)


def start_training(cfg: Any, opts: Any) -> Run | None:
    """The MLflow run of training run ``opts.run_dir`` (the recorded one when resuming), with its parameters."""
    if not opts.mlflow_uri:
        return None
    check_nodes(opts.mlflow_uri)
    run = recorded_run(opts.mlflow_uri, opts.run_dir)
    if run is None:
        tags = {"mnist_ray.kind": "train", "mnist_ray.run_dir": opts.run_dir}
        run = _new_run(opts.mlflow_uri, EXPERIMENT, opts.name, tags, opts.run_dir)
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
        _client(run.uri).set_terminated(run.run_id, status)


def log_files(run: Run, files: dict[str, str]) -> None:
    """Log each file (a path or URI) as an artifact under its folder in ``files``."""
    client = _client(run.uri)
    for path, folder in files.items():
        with storage.local_copy(path) as local:
            client.log_artifact(run.run_id, str(local), artifact_path=folder or None)


def log_training(run: Run | None, out: Any) -> Any:
    """Log a finished run's outputs and best validation figures; ``out`` with its MLflow run id."""
    if run is None:
        return out
    log_metrics(run, {f"best_{k}": out.best_metrics[k] for k in ("val_acc", "val_loss", "epoch")})
    log_files(run, {out.curves: "", out.history: "", out.config: "", out.best_checkpoint: "best_checkpoint"})
    return dataclasses.replace(out, mlflow_run_id=run.run_id)


def sweep_experiment(name: str) -> str:
    """The MLflow experiment of sweep ``name``."""
    return f"{EXPERIMENT}-sweep-{name}"


def tune_callbacks(uri: str | None, name: str) -> list:
    """Ray Tune's ``MLflowLoggerCallback`` for sweep ``name`` (one MLflow run per trial); none without a URI."""
    if not uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    experiment(uri, sweep_experiment(name))  # created here, so its artifacts land beside a SQLite store
    tags = {"mnist_ray.kind": "trial", "mnist_ray.sweep": name}
    callback = MLflowLoggerCallback(uri, experiment_name=sweep_experiment(name), tags=tags, save_artifact=True)
    return [callback]


def log_sweep(opts: Any, result: Any) -> str | None:
    """A run named after the sweep, in its experiment: best config, headline figures, reports, best checkpoint."""
    if not opts.mlflow_uri:
        return None
    tags = {"mnist_ray.kind": "sweep", "mnist_ray.run_dir": opts.run_dir, "mnist_ray.best_trial": result.best_trial}
    run = _new_run(opts.mlflow_uri, sweep_experiment(opts.name), opts.name, tags, opts.run_dir)
    with ended(run):
        log_params(run, json.loads(storage.read_text(result.best_config)))
        log_metrics(run, {k: getattr(result, k) for k in ("best_val_acc", "wall_s", "trials_run", "stopped_early")})
        files = {result.trials: "", result.plot: "", result.best_config: ""}
        log_files(run, {**files, result.best_checkpoint: "best_checkpoint"})
    return run.run_id


def run_dir_of(checkpoint: str) -> str:
    """The run (or sweep) folder a checkpoint file belongs to: ``<run>/<checkpoint folder>/model.pt`` -> ``<run>``."""
    folder = checkpoint.rstrip("/").rsplit("/", 1)[0] if checkpoint.endswith(".pt") else checkpoint.rstrip("/")
    return folder.rsplit("/", 1)[0]


def log_evaluation(uri: str | None, report_dir: str, metrics: dict[str, Any]) -> str | None:
    """Log an evaluation's test metrics and report files into the scored run's MLflow run, or a new one.

    Returns the MLflow run id (None without a URI). The report's files go under ``evaluation/<report id>/``.
    """
    if not uri:
        return None
    report_id = metrics["run_id"]
    run = recorded_run(uri, run_dir_of(metrics["checkpoint"]))
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
