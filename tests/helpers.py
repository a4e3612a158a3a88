"""Helpers shared by the tests: run a job in-process or as a real process, and join the test cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

from mnist_ray.settings import cli
from tests.conftest import REPO


@dataclass(frozen=True)
class JobResult:
    """Exit code and captured output of one job run."""

    returncode: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """stderr lines that are not Ray's own warnings."""
        return [ln for ln in self.stderr.splitlines() if ln.strip() and "WARNING" not in ln]


def call(main: Callable, capsys, *argv: str) -> JobResult:
    """Run a job's ``main`` in this process (on the suite's shared Ray) as ``jobs/*.py`` would."""
    capsys.readouterr()
    code = cli.run(main, list(argv))
    out = capsys.readouterr()
    return JobResult(code, out.out, out.err)


def cluster_env(ray_session=None, **extra: str) -> dict[str, str]:
    """Environment for a job subprocess: joins the suite's Ray when given, else starts its own."""
    address = ray_session.get_runtime_context().gcs_address if ray_session is not None else ""
    return {**os.environ, "RAY_ADDRESS": address, **extra}


def run_job(script: str, *args: str, env: dict | None = None, timeout: int = 180) -> JobResult:
    """Run ``jobs/<script>`` as a real process (for exit codes, signals, a fresh interpreter)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else cluster_env(),
    )
    return JobResult(result.returncode, result.stdout, result.stderr)


def assert_one_line_error(result: JobResult, message: str) -> None:
    """Exit 2 and exactly one ``error:`` line containing ``message``."""
    err = result.error_lines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], result.stderr[-2000:]


def alive_actors(class_name: str, detail: bool = False) -> list:
    """Live actors of ``class_name`` in the suite's Ray (named by address: other Ray instances may run here)."""
    import ray
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name), ("state", "=", "ALIVE")]
    return list_actors(address=ray.get_runtime_context().gcs_address, filters=filters, detail=detail)


CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
"""A user's PATH without .venv/bin: a submitter needs nothing on PATH; the head's PATH runs the job."""


def run_submit(*args: str, address: str | None = None, auth: str = "token", timeout: float = 600):
    """The wrapper as a scheduler runs it: from the checkout, RAY_ADDRESS and RAY_AUTH_MODE in the environment."""
    env = {"PATH": CLEAN_PATH, "HOME": os.environ["HOME"], "LANG": "C.UTF-8", "RAY_AUTH_MODE": auth}
    if address:
        env["RAY_ADDRESS"] = address
    cmd = [sys.executable, "-m", "mnist_ray.submit", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def mlflow_client(uri: str):
    """An MLflow client of the store at ``uri`` (imported here: MLflow is an optional extra)."""
    import mlflow

    return mlflow.MlflowClient(uri)


def mlflow_artifacts(client, run_id: str, folder: str = "") -> set[str]:
    """Every artifact file of an MLflow run, as paths relative to its root."""
    found = set()
    for item in client.list_artifacts(run_id, folder or None):
        found |= mlflow_artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of each logged value of metric ``key``, by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def start_job(script: str, *args: str, env: dict, group: bool = False) -> subprocess.Popen:
    """``jobs/<script>`` as a real process, stdout and stderr apart; ``group``: in a process group of its own."""
    cmd = [sys.executable, str(REPO / "jobs" / script), *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=group
    )


def signal_after_line(
    proc: subprocess.Popen, prefix: str, sig: int, delay: float = 0.0, group: bool = False, timeout: float = 240
) -> tuple[JobResult, float]:
    """Read the job's stdout until a line starts with ``prefix``, send ``sig`` (to its whole process group with
    ``group``, as ``timeout`` and systemd do), and wait for it to exit: (its result, seconds from signal to exit)."""
    import signal as _signal
    import time

    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            time.sleep(delay)
            sent = time.monotonic()
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            out, err = proc.communicate(timeout=120)
            return JobResult(proc.returncode, "".join(lines) + out, err), time.monotonic() - sent
    proc.send_signal(_signal.SIGKILL)
    out, err = proc.communicate()
    raise AssertionError(f"no line {prefix!r}: " + ("".join(lines) + out)[-3000:] + err[-3000:])


def assert_stopped_cleanly(result: JobResult, sig_name: str, next_step: str) -> None:
    """Exit 128 + signal, one ``stopped by`` line on stderr with ``next_step``, no Ray dump, no traceback."""
    import signal as _signal

    both = result.stdout + result.stderr
    assert result.returncode == 128 + _signal.Signals[sig_name].value, both[-3000:]
    assert result.error_lines() == [f"stopped by {sig_name}; {next_step}"], both[-3000:]
    assert "Traceback" not in both and "*** " not in both and "received at time" not in both, both[-3000:]
    assert "Unhandled error" not in both and " ERROR " not in both, both[-3000:]
