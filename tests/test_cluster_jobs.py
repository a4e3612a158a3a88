"""The job flow users run: a real `ray start` head on 127.0.0.1 with token auth, jobs via `ray job submit`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pandas as pd
import pytest
from ray.job_submission import JobSubmissionClient

from tests.conftest import REPO
from tests.ray_head import RayHead

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(ray_session):  # ray_session first: it makes sure ~/.ray/auth_token exists
    h = RayHead(num_cpus=2)
    yield h
    h.stop()


def submit(head: RayHead, *entrypoint: str) -> tuple[str, str]:
    """Submit from the repository as the working dir; wait for a terminal state; return (status, logs)."""
    out = head.ray("job", "submit", "--no-wait", "--working-dir", str(REPO), "--", "python", *entrypoint)
    assert out.returncode == 0, out.stdout + out.stderr
    job_id = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)
    client = JobSubmissionClient(head.dashboard)  # this process already runs with RAY_AUTH_MODE=token
    deadline = time.time() + 300
    while time.time() < deadline and not client.get_job_status(job_id).is_terminal():
        time.sleep(2)
    return str(client.get_job_status(job_id).value), client.get_job_logs(job_id)


def test_train_then_evaluate_through_the_job_server(head, tmp_path):
    status, logs = submit(
        head,
        "jobs/train.py",
        "--output",
        str(tmp_path / "runs"),
        "--name",
        "job",
        "--epochs",
        "2",
        "--train-limit",
        "1024",
        "--val-size",
        "256",
        "--batch-size",
        "64",
    )
    assert status == "SUCCEEDED", logs[-3000:]
    assert "epoch   2/2" in logs and "best checkpoint:" in logs
    run = tmp_path / "runs" / "job"
    assert len(pd.read_parquet(run / "history.parquet")) == 2 and (run / "curves.png").is_file()
    assert json.loads((run / "config.json").read_text())["train_limit"] == 1024

    status, logs = submit(
        head,
        "jobs/evaluate.py",
        "--run",
        str(run),
        "--reports",
        str(tmp_path / "reports"),
        "--run-id",
        "nightly",
        "--actors",
        "1",
    )
    assert status == "SUCCEEDED", logs[-3000:]
    metrics = pd.read_parquet(tmp_path / "reports" / "nightly" / "metrics.parquet")
    assert metrics["n"].iloc[0] == 10000 and metrics["checkpoint"].iloc[0].startswith(str(run))
    assert not list(REPO.glob("runs")) and not list(REPO.glob("reports"))  # nothing written in the working dir


def test_bad_flags_end_failed_with_the_error_line(head):
    status, logs = submit(head, "jobs/train.py", "--lr", "-1")
    assert status == "FAILED"
    assert "error: lr must be positive, got -1: pass a positive --lr" in logs


def test_job_server_rejects_requests_without_the_token(head):
    env = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
    env.update(RAY_AUTH_MODE="disabled", RAY_ADDRESS=head.dashboard)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from ray.job_submission import JobSubmissionClient as C; print(C('{head.dashboard}').list_jobs())",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and re.search(r"401|[Uu]nauthori[sz]ed|token", out.stderr), out.stderr[-2000:]
