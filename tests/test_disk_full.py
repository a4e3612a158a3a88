"""Full disks and quotas: one ``error:`` line with the free space and what is needed, exit 1, nothing half-published,
no restarts spent, and the same command resumes once space is freed.

Real small tmpfs mounts where ``mount -t tmpfs`` works (root); a fault injected at the storage layer otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from mnist_ray.files import capacity, publishing
from mnist_ray.files.folders import RunFolder
from mnist_ray.jobs import evaluate
from mnist_ray.training import checkpoints, progress
from tests import helpers

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
SLOW_FLAGS = ["--epochs", "3", "--train-limit", "8192", "--val-size", "512", "--batch-size", "64", "--no-augment"]


@pytest.fixture
def tmpfs(tmp_path):
    """A function mounting a real tmpfs of the given size under ``tmp_path``; unmounted afterwards."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        target = tmp_path / f"tmpfs{len(mounts)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip() or done.returncode}")
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` until ``leave`` bytes are free, as another writer would."""
    stat = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_disk_that_fills_mid_run_fails_at_once_and_the_same_command_resumes(tmpfs, ray_session):
    out = tmpfs("8m")
    args = ["--output", str(out), "--name", "s", *SLOW_FLAGS]
    proc = helpers.start_job("train.py", *args, env=helpers.cluster_env(ray_session))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("epoch   1/3"):
            filler = _fill(out, leave=300_000)  # the epoch-2 checkpoint (1.2 MB) cannot be written
            break
    stdout, stderr = proc.communicate(timeout=180)
    result = helpers.JobResult(proc.returncode, "".join(lines) + stdout, stderr)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    [line] = result.error_lines()
    assert line.startswith(f"error: {out / 's'}: no space left (") and "free, needs about " in line, line
    assert line.endswith("free some space; the same command resumes"), line
    assert "lost worker" not in result.stdout + result.stderr  # no worker-group restart was spent on it
    assert "Traceback" not in result.stdout + result.stderr
    run = RunFolder(str(out / "s"), str(out / "s"))
    assert checkpoints.last_epoch(run) == 1  # the cut-short epoch-2 checkpoint is not the latest
    assert not (out / "s" / "best_checkpoint").exists() and not (out / ".s.lease").exists()

    filler.unlink()
    again = helpers.run_job("train.py", *args, env=helpers.cluster_env(ray_session), timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert [ln.split()[1] for ln in again.stdout.splitlines() if ln.startswith("epoch ")] == ["2/3", "3/3"]
    assert pd.read_parquet(out / "s" / "history.parquet")["epoch"].tolist() == [1, 2, 3]


def test_an_output_without_room_for_the_run_is_refused_before_ray(tmpfs):
    out = tmpfs("600k")
    result = helpers.run_job("train.py", "--preset", "smoke", "--output", str(out), env=helpers.cluster_env())
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.error_lines()
    assert line.startswith(f"error: {out / 'mnist'}: no space left (") and "pass another --output" in line, line
    assert "ray:" not in result.stdout and list(out.iterdir()) == []  # before Ray, nothing written


def test_a_full_reports_disk_is_one_line_and_publishes_nothing(tmpfs, tiny_run, capsys):
    reports = tmpfs("2m")
    _fill(reports, leave=60_000)
    args = ["--run", tiny_run[2].run_dir, "--reports", str(reports), "--run-id", "r", "--actors", "1"]
    result = helpers.call(evaluate.main, capsys, *args)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.error_lines()
    assert line.startswith(f"error: {reports / 'r'}: no space left (") and ", needs about " in line, line
    assert not (reports / "r").exists() and sorted(p.name for p in reports.iterdir()) == ["filler"]


def test_a_refused_write_at_the_storage_layer_is_one_line(tmp_path, tiny_run, capsys, monkeypatch):
    """The fault the issue saw: copytree's list of (src, dst, error) tuples becomes the one-line DiskFull."""

    def refuse(src, dst, **kw):
        raise shutil.Error([(str(src), str(dst), "[Errno 28] No space left on device")])

    monkeypatch.setattr(publishing.shutil, "copytree", refuse)
    args = ["--run", tiny_run[2].run_dir, "--reports", str(tmp_path), "--run-id", "r", "--actors", "1"]
    result = helpers.call(evaluate.main, capsys, *args)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.error_lines()
    assert line.startswith(f"error: {tmp_path / 'r'}: no space left (") and "[(" not in line, line
    assert not (tmp_path / "r").exists()


def test_a_full_disk_in_a_worker_ends_the_run_instead_of_restarting_it():
    """The controller-side callback: a disk-full worker error asks the driver to end the run; others restart."""
    events: list[dict] = []
    callback = progress._QueueCallback(SimpleNamespace(put_nowait=events.append), max_failures=2)
    callback.after_exception(None, {0: OSError(errno.ENOSPC, "No space left on device")})
    assert "disk_full" in events[0] and callback.failures == 0
    callback.after_exception(None, {1: RuntimeError("Connection reset by peer")})
    assert "restarting from the start (restart 1 of --max-failures 2)" in events[1]["event"]


@pytest.mark.parametrize(
    ("exc", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (shutil.Error([("a", "b", "[Errno 28] No space left on device")]), True),
        (OSError("When uploading part: AWS Error QuotaExceeded during UploadPart"), True),
        (RuntimeError("wrapped"), False),
        (OSError(errno.EACCES, "Permission denied"), False),
    ],
)
def test_what_counts_as_a_full_disk(exc, full):
    assert capacity.is_disk_full(exc) is full
