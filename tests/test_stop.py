"""Stop signals (SIGTERM, SIGHUP) end every job as Ctrl-C does: one line, exit 128 + signal, nothing half-published.

Each test runs a real job process and sends it a real signal. Ray's own handlers (``ray.init``'s, a local head's,
the core worker's C++ failure handler) would give exit 1, 15 or 134 and a stack dump: these tests fail if a Ray
upgrade installs one after :func:`mnist_ray.cluster.stop.reinstall`.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests import helpers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
TINY_FLAGS = ["--train-limit", "8192", "--val-size", "512", "--batch-size", "64", "--no-augment", "--lr", "3e-3"]


def test_sigterm_mid_epoch_stops_the_workers_and_marks_the_mlflow_run_killed(tmp_path, ray_session):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--output", str(tmp_path), "--name", "s", "--epochs", "4", *TINY_FLAGS, "--mlflow-uri", uri]
    proc = helpers.start_job("train.py", *args, env=helpers.cluster_env(ray_session))
    result, seconds = helpers.signal_after_line(proc, "epoch   1/4", signal.SIGTERM, delay=0.5)
    note = "the same command resumes from epoch 2 (checkpoint of epoch 1 kept)"
    helpers.assert_stopped_cleanly(result, "SIGTERM", note)
    assert seconds < 3.0, seconds  # within a job server's stop grace (RAY_JOB_STOP_WAIT_TIME_S, 3 s)
    client = helpers.mlflow_client(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
    deadline = time.time() + 30  # the driver's job ended: Ray stops its Train workers and controller
    while helpers.alive_actors("RayTrainWorker") and time.time() < deadline:
        time.sleep(0.5)
    assert not helpers.alive_actors("RayTrainWorker")
    assert not (tmp_path / ".s.lease").exists()  # released on the way out
    assert sorted(p.name for p in (tmp_path / "s").glob("checkpoint_epoch_*")) == ["checkpoint_epoch_001"]


def test_sighup_during_an_evaluation_says_no_report_was_published(tmp_path, ray_session, tiny_run):
    args = ["--run", tiny_run[2].run_dir, "--reports", str(tmp_path), "--run-id", "cut", "--actors", "1"]
    proc = helpers.start_job("evaluate.py", *args, env=helpers.cluster_env(ray_session))
    result, _ = helpers.signal_after_line(proc, "evaluating", signal.SIGHUP, delay=1.0)
    note = f"no report was published; not published: {tmp_path / 'cut'} (the same command writes them)"
    helpers.assert_stopped_cleanly(result, "SIGHUP", note)
    assert not (tmp_path / "cut").exists() and not (tmp_path / ".cut.lease").exists()


def test_sigterm_during_prediction_and_export_publishes_nothing(tmp_path, ray_session, tiny_run):
    checkpoint = tiny_run[2].best_checkpoint
    from mnist_ray import data

    arrays = data.load("mnist")
    images = tmp_path / "images.idx3-ubyte"
    images.write_bytes((2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2000, 28, 28)))
    with images.open("ab") as f:
        f.write(arrays.test_x[:2000].tobytes())
    proc = helpers.start_job(
        "predict.py", "--input", str(images), "--checkpoint", checkpoint, "--output", str(tmp_path / "pred"),
        env=helpers.cluster_env(ray_session),
    )  # fmt: skip
    result, _ = helpers.signal_after_line(proc, "predicting", signal.SIGTERM)
    note = "nothing was published (predictions.parquet is written whole or not at all); rerun the command"
    helpers.assert_stopped_cleanly(result, "SIGTERM", note)
    assert not (tmp_path / "pred").exists()
    proc = helpers.start_job(
        "export.py", "--checkpoint", checkpoint, "--output", str(tmp_path / "export"), env=helpers.cluster_env()
    )
    result, _ = helpers.signal_after_line(proc, "exporting", signal.SIGTERM)
    note = "nothing was published (an export folder is published whole or not at all); rerun the command"
    helpers.assert_stopped_cleanly(result, "SIGTERM", note)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.idx3-ubyte"]  # no output, no lease left
