"""MLflow tracking against a real local store: a tracked run, its resume and its evaluations, read back.

The Ray test logs into its own ``sqlite:`` store under tmp_path and reads the runs, parameters, per-epoch
metric histories and artifacts back with ``mlflow.MlflowClient``; a tracked sweep is read back by the sweep test
of tests/test_tuning.py. The fast tests check that without a URI nothing imports MLflow, and that every bad URI
is one error line before Ray starts.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mnist_ray.errors import ConfigError
from mnist_ray.files import folders
from mnist_ray.files.folders import RunFolder
from mnist_ray.jobs import evaluate, train, tune
from mnist_ray.reports import mlflow_store, tracking
from mnist_ray.settings.config import TrainConfig
from tests.conftest import REPO, REPORT_FILES, TINY
from tests.helpers import JobResult, assert_one_line_error, call, mlflow_artifacts, mlflow_client, mlflow_history

TINY_FLAGS = ["--epochs", "2", "--train-limit", "2048", "--val-size", "512", "--batch-size", "64", "--no-augment"]
TINY_FLAGS += ["--lr", str(TINY["lr"])]
EPOCH_METRICS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s", "images_per_s"}


def test_uris_resolve_to_absolute_stores(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(mlflow_store.ENV, raising=False)
    assert mlflow_store.resolve(None) == "" and mlflow_store.resolve("") == ""
    assert mlflow_store.resolve("sqlite:///ml/mlflow.db") == f"sqlite:///{tmp_path}/ml/mlflow.db"
    assert mlflow_store.resolve(f"sqlite:///{tmp_path}/a.db") == f"sqlite:///{tmp_path}/a.db"
    assert mlflow_store.resolve("file:./mlruns") == mlflow_store.resolve("mlruns") == (tmp_path / "mlruns").as_uri()
    assert mlflow_store.resolve("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv(mlflow_store.ENV, "sqlite:///from-env.db")
    assert mlflow_store.resolve(None) == f"sqlite:///{tmp_path}/from-env.db"
    assert mlflow_store.local_folder(mlflow_store.resolve(None)) == tmp_path
    assert folders.run_of("s3://b/runs/r1/best_checkpoint/model.pt").path == "s3://b/runs/r1"
    assert folders.run_of("/runs/r1/checkpoint_epoch_002").path == "/runs/r1"


def test_without_a_uri_nothing_imports_mlflow():
    """Every job's modules, its flags parsed and the URI check passed, in a fresh interpreter: no MLflow."""
    code = (
        "import sys\n"
        "from mnist_ray.training import trainer, worker, sweep\n"
        "from mnist_ray.reports import mlflow_store, report, tracking\n"
        "from mnist_ray.jobs import train, tune, evaluate\n"
        "train.parse(['--preset', 'smoke'])\n"
        "assert mlflow_store.check(None) == ''\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy', 'alembic')))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != mlflow_store.ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("sqlite://", "name the database file, e.g. sqlite:///mlruns/mlflow.db"),
        ("foo://bar", "unknown store scheme 'foo': use sqlite:///path/mlflow.db or http://host:5000"),
        ("sqlite:////proc/mnist_ray_ml/mlflow.db", "--mlflow-uri /proc/mnist_ray_ml: cannot write"),
        ("file:{tmp}/mlruns", "MLflow 3 refuses file stores (set MLFLOW_ALLOW_FILE_STORE=true to allow one)"),
        ("http://127.0.0.1:{port}", "no MLflow server answers"),
    ],
)
def test_a_bad_uri_is_one_line_before_ray(uri, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = uri.format(tmp=tmp_path, port=_free_port())
    result = call(train.main, capsys, "--output", str(tmp_path / "out"), "--mlflow-uri", uri)
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()  # stopped before anything was written


@pytest.mark.parametrize("job", [tune.main, evaluate.main])
def test_tune_and_evaluate_check_the_uri_too(job, tmp_path, capsys):
    assert_one_line_error(call(job, capsys, "--mlflow-uri", "sqlite://"), "name the database file")


def test_a_local_store_is_refused_on_a_multi_node_cluster(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}, {"Alive": True}])  # what ray.nodes() says of 2 nodes
    with pytest.raises(ConfigError, match="this Ray cluster has 2 nodes .* use an MLflow server"):
        mlflow_store.check_nodes(mlflow_store.resolve(f"sqlite:///{tmp_path}/mlflow.db"))
    mlflow_store.check_nodes("http://mlflow.internal:5000")  # a server every node reaches is fine


def test_a_failed_or_interrupted_run_is_marked_so(tmp_path):
    uri = mlflow_store.check(f"sqlite:///{tmp_path}/mlflow.db")
    client = mlflow_client(uri)
    for error, status in [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED"), (None, "FINISHED")]:
        run = tracking._new_run(uri, tracking.EXPERIMENT, status.lower(), {})
        with pytest.raises(error) if error else contextlib.nullcontext(), tracking.ended(run):
            if error:
                raise error
        assert client.get_run(run.run_id).info.status == status


def test_mlflow_not_installed_is_one_line(tmp_path):
    """A URI without the extra installed: the install command, exit 2, before anything else."""
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from mnist_ray.settings import cli; from mnist_ray.jobs import train\n"
        f"sys.exit(cli.run(train.main, ['--output', '{tmp_path}/out', '--mlflow-uri', 'sqlite:///{tmp_path}/m.db']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(JobResult(out.returncode, out.stdout, out.stderr), "pip install '.[mlflow]'")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()


def test_a_tracked_run_repeats_the_tiny_run_resumes_by_name_and_logs_its_evaluations(tiny_run, tmp_path, capsys):
    """A second run of the suite's tiny config, through the train job with MLflow on, then resumed by its name.

    The same seed and layout give the tiny run's metrics exactly; the resume runs only the new epoch and keeps the
    earlier ones unchanged. One MLflow run per training run: parameters, each epoch once (across the resume),
    outputs, evaluations. (One scenario, not two: each run costs a Ray Train start, ~15 s.)
    """
    uri, runs, reps = f"sqlite:///{tmp_path}/ml/mlflow.db", tmp_path / "runs", tmp_path / "reports"
    base = [*TINY_FLAGS, "--name", "tracked", "--output", str(runs), "--mlflow-uri", uri]
    first = call(train.main, capsys, *base, "--evaluate", "--reports", str(reps))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "auto: 1 worker x 2 CPUs (1 node, no GPU)" in first.stdout  # the 2-CPU suite Ray: one process
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    before = pd.read_parquet(runs / "tracked" / "history.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tiny_run[2].history)[cols], before[cols])  # the same seed
    record = json.loads((runs / "tracked" / RunFolder.tracking).read_text())
    client = mlflow_client(uri)
    run = client.get_run(record["run_id"])
    assert f"mlflow run: {record['run_id']} in {uri}" in " ".join(first.stdout.split())
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == tracking.EXPERIMENT
    assert run.data.params == {k: str(v) for k, v in TrainConfig(**TINY, cpus_per_worker=2).to_dict().items()}
    assert set(run.data.metrics) >= EPOCH_METRICS | {"best_val_acc", "best_epoch", "test_accuracy", "test_macro_f1"}
    assert [step for step, _ in mlflow_history(client, run.info.run_id, "val_acc")] == [1, 2]
    (report,) = [p.name for p in reps.iterdir() if p.is_dir()]
    assert mlflow_artifacts(client, run.info.run_id) == {
        "curves.png",
        "history.parquet",
        "config.json",
        "best_checkpoint/model.pt",
        *(f"evaluation/{report}/{name}" for name in REPORT_FILES),
    }
    assert (tmp_path / "ml" / "mlartifacts" / tracking.EXPERIMENT).is_dir()  # beside the store, not in the cwd

    again = call(train.main, capsys, *base, "--epochs", "3")  # resumes: the same MLflow run, epoch 3 only
    assert again.returncode == 0, again.stderr[-3000:]
    assert [ln.split()[1] for ln in again.stdout.splitlines() if ln.startswith("epoch ")] == ["3/3"]
    after = pd.read_parquet(runs / "tracked" / "history.parquet")
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # earlier epochs kept exactly once, unchanged
    resumed = client.get_run(run.info.run_id)
    assert [step for step, _ in mlflow_history(client, run.info.run_id, "val_acc")] == [1, 2, 3]
    assert resumed.data.params["epochs"] == "2" and resumed.data.tags["resumed_with.epochs"] == "3"
    assert json.loads((runs / "tracked" / RunFolder.tracking).read_text()) == record
    _evaluations_of_a_tracked_and_an_untracked_checkpoint(client, uri, runs / "tracked", tmp_path, capsys)


def _evaluations_of_a_tracked_and_an_untracked_checkpoint(client, uri: str, run_dir: Path, tmp_path, capsys) -> None:
    """The evaluation job: into the tracked run's MLflow run, and a run of its own for a loose checkpoint."""
    loose = tmp_path / "loose" / "model.pt"
    loose.parent.mkdir()
    shutil.copy(run_dir / "best_checkpoint" / "model.pt", loose)
    tracked = str(run_dir / "best_checkpoint" / "model.pt")
    args = ["--checkpoint", tracked, "--checkpoint", str(loose), "--reports", str(tmp_path / "reports2")]
    result = call(evaluate.main, capsys, *args, "--run-id", "ev", "--mlflow-uri", uri)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads((run_dir / RunFolder.tracking).read_text())["run_id"]
    assert len(mlflow_history(client, run_id, "test_accuracy")) == 2  # train --evaluate, then this evaluation
    assert {f"evaluation/ev-tracked/{name}" for name in REPORT_FILES} <= mlflow_artifacts(client, run_id)
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    (own,) = client.search_runs([experiment], "attributes.run_name = 'evaluate-ev-loose'")
    assert own.data.params["checkpoint"] == str(loose) and own.info.status == "FINISHED"
    assert own.data.metrics["test_accuracy"] == pytest.approx(client.get_run(run_id).data.metrics["test_accuracy"])
    assert mlflow_artifacts(client, own.info.run_id) == {f"evaluation/ev-loose/{name}" for name in REPORT_FILES}
