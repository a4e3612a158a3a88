"""``python -m mnist_ray.submit`` on a real head started as ``make cluster-up`` starts it: the job's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.job_submission import JobDetails, JobStatus

from mnist_ray import submit
from tests.conftest import REPO
from tests.ray_head import RayHead, free_ports

CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"  # the client needs nothing on PATH; the head's PATH runs the job


@pytest.fixture(scope="module")
def head():
    h = RayHead(num_cpus=2)
    yield h
    h.stop()


def run_submit(*args: str, address: str | None = None, auth: str = "token", timeout: float = 600):
    """The wrapper as a scheduler runs it: from the checkout, RAY_ADDRESS and RAY_AUTH_MODE in the environment."""
    env = {"PATH": CLEAN_PATH, "HOME": os.environ["HOME"], "LANG": "C.UTF-8", "RAY_AUTH_MODE": auth}
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "mnist_ray.submit", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_below_min_accuracy_exits_3_and_a_trained_job_exits_0(head, tmp_path):
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    train = ["python", "jobs/train.py", "--preset", "smoke", "--epochs", "1", "--output", str(runs), "--name", "s"]
    out = run_submit("--working-dir", ".", "--", *train, address=head.dashboard)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"ray: joined the cluster at {head.gcs} (RAY_ADDRESS, set by ray job submit)" in out.stdout  # streamed
    checkpoint = runs / "s" / "best_checkpoint" / "model.pt"
    assert checkpoint.is_file()

    evaluate = ["python", "jobs/evaluate.py", "--checkpoint", str(checkpoint), "--reports", str(reports)]
    out = run_submit(
        "--working-dir", ".", "--", *evaluate, "--run-id", "r", "--min-accuracy", "1.0", address=head.dashboard
    )
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-2000:]
    assert (reports / "r" / "metrics.parquet").is_file()  # the report is written, then the threshold applies
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
    code = "from mnist_ray import cluster; cluster.connect(num_cpus=1)"  # num_cpus is for a local start only
    env = {**head.env, "RAY_TMPDIR": str(head.tmp_root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    file = Path(head.temp_dir) / "ray_current_cluster"
    expected = (
        f"ray: joined the cluster at {head.gcs} (the head started by ray start on this machine, recorded in {file})"
    )
    assert out.stdout.strip().splitlines() == [expected]


def test_no_job_server_is_one_error_line_and_exit_2():
    (dead,) = free_ports(1)
    out = run_submit("--", "python", "-c", "print(1)", address=f"http://127.0.0.1:{dead}", timeout=60)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert error_lines(out) == out.stderr.strip().splitlines() and f"127.0.0.1:{dead}" in out.stderr


@pytest.mark.parametrize(
    ("status", "driver_exit_code", "expected"),
    [
        (JobStatus.SUCCEEDED, 0, 0),
        (JobStatus.FAILED, 3, 3),
        (JobStatus.FAILED, None, 1),  # e.g. the runtime environment could not be set up
        (JobStatus.FAILED, -9, 137),  # the driver was killed by SIGKILL
        (JobStatus.STOPPED, None, 1),
    ],
)
def test_exit_code(status, driver_exit_code, expected):
    info = JobDetails(type="SUBMISSION", status=status, entrypoint="python x.py", driver_exit_code=driver_exit_code)
    assert submit.exit_code(info) == expected
