"""``python -m mnist_ray.submit`` without a head: how each job state maps to an exit code, and a dead server.

The submitter against a real head is in tests/test_cluster_jobs.py (one head for both files' worth of tests).
"""

from __future__ import annotations

import pytest
from ray.job_submission import JobDetails, JobStatus

from mnist_ray import submit
from tests.helpers import error_lines, run_submit
from tests.ray_head import free_ports


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
