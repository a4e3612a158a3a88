"""The MLflow store a job logs to: resolved from ``--mlflow-uri`` or ``$MLFLOW_TRACKING_URI``, proven usable before
Ray starts, and the experiments in it. Nothing here imports ``mlflow`` until a URI is given.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mnist_ray.errors import ConfigError
from mnist_ray.files import capacity

ENV = "MLFLOW_TRACKING_URI"
INSTALL = "pip install '.[mlflow]'"
SERVERS = ("http", "https", "databricks", "postgresql", "mysql", "mssql")
"""Schemes of stores every node reaches (an MLflow server, Databricks, a database server), passed on unchanged."""
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


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


def client(uri: str) -> Any:
    """MLflow's client of the store ``uri``."""
    import mlflow

    return mlflow.MlflowClient(uri)


def experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created if new; a SQLite store's artifacts go to ``mlartifacts/`` beside it.

    (MLflow's default for a SQLite store is ``./mlruns`` under the working directory of whichever process
    creates the experiment.)
    """
    store = client(uri)
    found = store.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    folder = local_folder(uri) if _scheme(uri) == "sqlite" else None
    location = (folder / "mlartifacts" / name).as_uri() if folder else None
    return store.create_experiment(name, artifact_location=location)


def check_nodes(uri: str) -> None:
    """A local store is on this machine's disk: refuse it when a training worker may run on another node."""
    import ray

    nodes = sum(1 for n in ray.nodes() if n["Alive"])
    if local_folder(uri) is not None and nodes > 1:
        raise ConfigError(
            f"--mlflow-uri {uri} is on this machine, but this Ray cluster has {nodes} nodes and rank 0 logs "
            "each epoch from its own node: use an MLflow server, --mlflow-uri http://host:5000"
        )
