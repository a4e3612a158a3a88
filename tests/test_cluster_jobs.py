"""The job flow users run: a real `ray start` head on 127.0.0.1 with token auth, jobs via `ray job submit`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from ray.job_submission import JobSubmissionClient

from tests.conftest import REPO
from tests.helpers import CLEAN_PATH, error_lines, run_submit
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
        time.sleep(0.5)
    return str(client.get_job_status(job_id).value), client.get_job_logs(job_id)


@pytest.fixture(scope="module")
def trained(head, tmp_path_factory) -> tuple[Path, str]:
    """One small run trained through ``ray job submit`` on the head: (run folder, the job's logs)."""
    runs = tmp_path_factory.mktemp("head-runs")
    args = ["--output", str(runs), "--name", "job", "--epochs", "2", "--train-limit", "1024", "--val-size", "256"]
    status, logs = submit(head, "jobs/train.py", *args, "--batch-size", "64")
    assert status == "SUCCEEDED", logs[-3000:]
    return runs / "job", logs


def test_train_then_evaluate_through_the_job_server(head, trained, tmp_path):
    run, logs = trained
    assert "epoch   2/2" in logs and "best checkpoint:" in logs
    assert f"ray: joined the cluster at {head.gcs} (RAY_ADDRESS, set by ray job submit)" in logs
    assert re.search(r"^auto: 1 worker x \d+ CPUs? \(1 node, no GPU\)$", logs, flags=re.M)  # the head's own CPUs
    assert len(pd.read_parquet(run / "history.parquet")) == 2 and (run / "curves.png").is_file()
    assert json.loads((run / "config.json").read_text())["train_limit"] == 1024
    args = ["--run", str(run), "--reports", str(tmp_path / "reports"), "--run-id", "nightly", "--actors", "1"]
    status, logs = submit(head, "jobs/evaluate.py", *args)
    assert status == "SUCCEEDED", logs[-3000:]
    # The default output is the job's own lines only: no core_worker.cc line, no Ray Data or token warnings.
    ours = ("ray: joined", "auto: 1 scoring replica of 1 CPU", "evaluating ", "test accuracy ", "report: ", "summary: ")
    driver = logs.split("Running entrypoint for job", 1)[1].splitlines()[1:]  # after the job server's own lines
    assert driver and all(line.startswith(ours) for line in driver if line.strip()), logs[-3000:]
    metrics = pd.read_parquet(tmp_path / "reports" / "nightly" / "metrics.parquet")
    assert metrics["n"].iloc[0] == 10000 and metrics["checkpoint"].iloc[0].startswith(str(run))
    assert not list(REPO.glob("runs")) and not list(REPO.glob("reports"))  # nothing written in the working dir


def test_bad_flags_end_failed_with_the_error_line(head):
    status, logs = submit(head, "jobs/train.py", "--lr", "-1")
    assert status == "FAILED"
    assert "error: lr must be in (0, 10], got -1: pass --lr in (0, 10]" in logs


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


def test_the_submitter_returns_the_jobs_own_exit_code_3_below_min_accuracy(head, trained, tmp_path):
    """``python -m mnist_ray.submit`` (what a scheduler runs): the report is written, then exit 3, not 1."""
    checkpoint = trained[0] / "best_checkpoint" / "model.pt"
    evaluate = ["python", "jobs/evaluate.py", "--checkpoint", str(checkpoint), "--reports", str(tmp_path / "reports")]
    out = run_submit(
        "--working-dir", ".", "--", *evaluate, "--run-id", "r", "--min-accuracy", "1.0", address=head.dashboard
    )
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"ray: joined the cluster at {head.gcs} (RAY_ADDRESS, set by ray job submit)" in out.stdout  # streamed
    assert (tmp_path / "reports" / "r" / "metrics.parquet").is_file()  # the report is written, then the threshold
    assert out.stderr.strip().splitlines()[-1].endswith("FAILED, exit code 3")


@pytest.mark.slow
def test_bad_input_exits_2_and_any_exit_code_comes_back(head):
    out = run_submit("--working-dir", ".", "--", "python", "jobs/evaluate.py", "--no-such-flag", address=head.dashboard)
    assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stdout, out.stdout[-3000:]
    out = run_submit("--address", head.dashboard, "--", "python", "-c", "raise SystemExit(7)")
    assert out.returncode == 7, out.stderr[-2000:]


@pytest.mark.slow
def test_a_missing_token_is_one_error_line(head):
    out = run_submit("--", "python", "-c", "print(1)", address=head.dashboard, auth="disabled", timeout=60)
    assert out.returncode == 2 and len(error_lines(out)) == 1 and "token" in error_lines(out)[0], out.stderr[-2000:]


@pytest.mark.slow
def test_a_job_joins_the_head_recorded_by_ray_start(head):
    """RAY_ADDRESS unset: ray.init() joins the head whose address ray start wrote on this machine, and says so."""
    code = "from mnist_ray.cluster import connection; connection.connect(num_cpus=1)"  # num_cpus: a local start's
    env = {**head.env, "RAY_TMPDIR": str(head.tmp_root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    file = Path(head.temp_dir) / "ray_current_cluster"
    expected = (
        f"ray: joined the cluster at {head.gcs} (the head started by ray start on this machine, recorded in {file})"
    )
    assert out.stdout.strip().splitlines() == [expected]


def _job_lines_until(client: JobSubmissionClient, job_id: str, text: str, timeout: float = 240) -> str:
    """The job's logs once they contain ``text``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = client.get_job_logs(job_id)
        if text in logs:
            return logs
        assert not client.get_job_status(job_id).is_terminal(), logs[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"no {text!r} in the job's logs")


def test_ray_job_stop_ends_the_driver_by_itself_and_resubmitting_resumes(head, tmp_path):
    args = ["--output", str(tmp_path), "--name", "stopped", "--epochs", "3", "--train-limit", "8192"]
    entry = ["python", "jobs/train.py", *args, "--val-size", "512", "--batch-size", "64", "--no-augment"]
    out = head.ray("job", "submit", "--no-wait", "--working-dir", str(REPO), "--", *entry)
    job_id = re.search(r"raysubmit_\w+", out.stdout + out.stderr).group(0)
    client = JobSubmissionClient(head.dashboard)
    _job_lines_until(client, job_id, "epoch   1/3")
    assert head.ray("job", "stop", job_id).returncode == 0
    while not client.get_job_status(job_id).is_terminal():
        time.sleep(0.5)
    logs = client.get_job_logs(job_id)
    assert re.search(r"^stopped by SIGTERM; the same command resumes from epoch [23] ", logs, re.M), logs[-3000:]
    assert "Traceback" not in logs and "*** SIGTERM" not in logs, logs[-3000:]
    # STOPPED alone proves nothing (the server sets it after any stop): its supervisor saw the driver exit in time.
    supervisor = (Path(head.temp_dir) / "session_latest" / "logs" / "jobs" / f"supervisor-{job_id}.log").read_text()
    assert "terminated gracefully with SIGTERM" in supervisor and "force-killed" not in supervisor, supervisor[-2000:]
    status, logs = submit(head, *entry[1:])
    assert status == "SUCCEEDED", logs[-3000:]
    assert [ln.split()[1] for ln in logs.splitlines() if ln.startswith("epoch ")][0] != "1/3", logs[-3000:]
    assert pd.read_parquet(tmp_path / "stopped" / "history.parquet")["epoch"].tolist() == [1, 2, 3]


def test_the_submitter_passes_sigterm_on_as_a_job_stop(head):
    env = {"PATH": CLEAN_PATH, "HOME": os.environ["HOME"], "LANG": "C.UTF-8", "RAY_AUTH_MODE": "token"}
    code = "import time; print('waiting', flush=True); time.sleep(300)"
    cmd = [sys.executable, "-m", "mnist_ray.submit", "--address", head.dashboard, "--", "python", "-c", code]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("waiting"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    job_id = re.search(r"raysubmit_\w+", err).group(0)
    assert err.strip().splitlines()[-1] == f"stopped by SIGTERM; asked the job server to stop {job_id}: STOPPED"
    assert JobSubmissionClient(head.dashboard).get_job_status(job_id).value == "STOPPED"
