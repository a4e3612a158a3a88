"""Faults a real run meets: a SIGKILLed worker, a killed driver, a killed evaluation; and loopback-only binds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mnist_ray.settings.config import RunOptions, TrainConfig
from mnist_ray.training import progress, trainer
from tests import helpers
from tests.conftest import REPO, REPORT_FILES, TINY

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
SLOWER = {**TINY, "train_limit": 8192, "epochs": 4}  # epochs of a few seconds: time to kill mid-run


def _alive_train_workers() -> list[int]:
    return [a.pid for a in helpers.alive_actors("RayTrainWorker", detail=True)]


def test_lost_worker_restarts_from_last_checkpoint_and_says_so_in_one_line(tmp_path, caplog, capfd):
    killed: list[int] = []
    reports: list[dict] = []
    final_workers: list[int] = []

    def on_epoch(metrics: dict) -> None:
        reports.append(metrics)
        if metrics["epoch"] == 1 and not killed:
            pid = _alive_train_workers()[0]
            os.kill(pid, signal.SIGKILL)  # a real worker process of this run, as an OOM kill would
            killed.append(pid)
        if metrics["epoch"] == 4:
            final_workers.extend(_alive_train_workers())

    caplog.set_level("WARNING", logger="mnist_ray.training.progress")
    caplog.set_level("DEBUG", logger="mnist_ray.ray_workarounds.output")  # last: the capture handler takes this level
    out = trainer.train(TrainConfig(**SLOWER), RunOptions(name="lost", output=str(tmp_path), max_failures=2), on_epoch)
    lines = [r.getMessage() for r in caplog.records if r.name == "mnist_ray.training.progress"]
    # Ray's raylet dump about the dead worker reached the driver, but only its debug log, not the output.
    assert any(
        "ray: A worker died" in r.getMessage() for r in caplog.records if r.name == "mnist_ray.ray_workarounds.output"
    )
    shown = capfd.readouterr()
    assert "(raylet)" not in shown.out + shown.err and "A worker died" not in shown.out + shown.err
    assert len(lines) == 1 and re.match(r"lost worker rank \d", lines[0]), lines
    assert "restarting from the epoch 1 checkpoint (restart 1 of --max-failures 2)" in lines[0]
    assert "\n" not in lines[0]
    history = pd.read_parquet(out.history)
    assert killed and killed[0] not in final_workers  # a new worker group finished the run
    assert history["epoch"].tolist() == [1, 2, 3, 4]  # every epoch exactly once
    assert history["val_acc"].iloc[-1] > 0.9 and history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def _job(script: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _kill_after_line(proc: subprocess.Popen, prefix: str, delay: float = 0.0) -> None:
    """Read the job's output until a line starts with ``prefix``, then SIGKILL the driver."""
    helpers.signal_after_line(proc, prefix, signal.SIGKILL, delay=delay)


@pytest.fixture
def cluster_env(ray_session) -> dict:
    """Environment for a job process that joins the tests' Ray cluster."""
    return helpers.cluster_env(ray_session)


def test_killed_train_driver_resumes_with_the_same_command(tmp_path):
    # Its own local Ray per driver, as a user's job has: what a SIGKILLed driver leaves must not starve the suite's.
    # Nor does it get the suite's loopback setting: the job itself must keep its local Ray on loopback.
    env = helpers.cluster_env(RAY_ADDRESS="local")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    args = [
        "--output",
        str(tmp_path),
        "--name",
        "interrupted",
        "--epochs",
        "4",
        "--train-limit",
        "8192",
        "--val-size",
        "512",
        "--batch-size",
        "64",
        "--no-augment",
        "--keep-checkpoints",
        "1",
    ]
    _kill_after_line(_job("train.py", *args, env=env), "epoch   1/4")
    # Resumed, then stopped as `timeout` or systemd stop a job: SIGTERM to its whole process group, Ray's included.
    # (A SIGKILLed driver's workers may still finish the epoch in flight, so the resume starts at epoch 2 or 3.)
    second = helpers.start_job("train.py", *args, env=env, group=True)
    stopped, _ = helpers.signal_after_line(second, "epoch ", signal.SIGTERM, group=True)
    done = int(re.search(r"^epoch +(\d)/4", stopped.stdout, re.M)[1])
    note = f"the same command resumes from epoch {done + 1} (checkpoint of epoch {done} kept)"
    assert done < 4, stopped.stdout[-2000:]
    helpers.assert_stopped_cleanly(stopped, "SIGTERM", note)
    # The SIGKILLed driver could not release its lease: its pid is dead, so the resume took it over in one line.
    took = [ln for ln in stopped.stdout.splitlines() if ln.startswith("warning: took over run interrupted")]
    assert len(took) == 1 and "is not running" in took[0], stopped.stdout[-2000:]
    assert not _descendants(second.pid), "the stopped job left processes behind"
    again = _job("train.py", *args, env=env)
    listeners = _listeners_until_exit(again)
    out = again.stdout.read()
    assert again.returncode == 0, out[-3000:]
    # Every port the local run opened, torch's DDP rendezvous and gloo's included, is on loopback.
    assert listeners and all(_on_loopback(line) for line in listeners), listeners
    per_worker = Counter(re.search(r"pid=(\d+)", ln)[1] for ln in listeners if "RayTrainWo" in ln)
    assert per_worker and max(per_worker.values()) >= 2, listeners  # rank 0: its Ray port and torch's store
    epochs = [int(ln.split()[1].split("/")[0]) for ln in out.splitlines() if ln.startswith("epoch ")]
    # Continued after the stopped run's last checkpoint, never from the start. The group's SIGTERM also reaches the
    # workers' raylet, and the epoch in flight may still complete while it drains.
    assert not epochs or (epochs[0] > done and epochs[-1] == 4), out
    assert pd.read_parquet(tmp_path / "interrupted" / "history.parquet")["epoch"].tolist() == [1, 2, 3, 4]
    kept = sorted(p.name for p in (tmp_path / "interrupted").glob("checkpoint_epoch_*"))
    assert len(kept) <= 2 and "checkpoint_epoch_004" in kept, kept  # --keep-checkpoints 1, plus the latest


def test_killed_evaluation_leaves_no_partial_report(tmp_path, cluster_env, tiny_run):
    proc = _job(
        "evaluate.py",
        "--run",
        tiny_run[2].run_dir,
        "--reports",
        str(tmp_path),
        "--run-id",
        "cut",
        "--actors",
        "1",
        env=cluster_env,
    )
    _kill_after_line(proc, "evaluating", delay=2.0)
    report = tmp_path / "cut"
    assert not report.exists() or {p.name for p in report.iterdir()} == REPORT_FILES
    from mnist_ray.files import publishing

    assert not report.exists() or publishing.is_complete(str(report))


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _listening(pids: set[int]) -> set[str]:
    """``ss -ltnp`` lines of the TCP sockets that any of ``pids`` listens on."""
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    return {" ".join(ln.split()[3:]) for ln in lines if {int(p) for p in re.findall(r"pid=(\d+)", ln)} & pids}


def _listeners_until_exit(proc: subprocess.Popen, timeout: float = 300) -> set[str]:
    """Every listening socket of ``proc`` and its descendants (Ray's processes), sampled until it exits."""
    seen: set[str] = set()
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        seen |= _listening(_descendants(proc.pid) | {proc.pid})
        time.sleep(0.2)
    proc.wait(timeout=max(1.0, deadline - time.time()))
    return seen


def _on_loopback(line: str) -> bool:
    return line.split()[0].rsplit(":", 1)[0] in {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}


def test_ray_processes_started_by_the_tests_listen_on_loopback_only():
    listening = _listening(_descendants(os.getpid()))
    assert all(_on_loopback(line) for line in listening), listening
    assert len(listening) >= 3  # GCS, raylet, dashboard at least


def test_the_lost_worker_line_says_when_the_restarts_are_used_up():
    """The controller-side callback's lines, without a run: restarts counted, then the last one gives up."""
    lines: list[dict] = []
    callback = progress._QueueCallback(SimpleNamespace(put_nowait=lines.append), max_failures=1)
    callback.after_report(None, [{"epoch": 3}], None)
    callback.after_exception(None, {1: RuntimeError("Connection reset by peer\nmore detail")})
    callback.after_exception(None, {0: RuntimeError("again")})
    events = [m["event"] for m in lines if "event" in m]
    assert events == [
        "lost worker rank 1 (RuntimeError: Connection reset by peer); restarting from the epoch 3 checkpoint "
        "(restart 1 of --max-failures 1)",
        "lost worker rank 0 (RuntimeError: again); giving up: --max-failures 1 restarts used",
    ]
