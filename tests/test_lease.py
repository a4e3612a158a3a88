"""One job per output: the lease is atomic, names its holder, and a dead holder's lease is taken over (local and S3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnist_ray.files import lease, storage
from tests import helpers
from tests.conftest import REPO
from tests.s3 import make_bucket

HOLD = (
    "import sys, time; from mnist_ray.files import lease; lease.acquire(sys.argv[1], 'run s'); "
    "print('held', flush=True); time.sleep(600)"
)


def _holder(folder: str, env: dict | None = None) -> subprocess.Popen:
    """A real process holding the lease of ``folder`` until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, folder], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env or os.environ
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _race(folder: str, n: int = 8) -> tuple[list[lease.Lease], list[str]]:
    """``n`` threads acquire the lease of ``folder`` at the same moment: (leases won, errors)."""
    won, errors, start = [], [], threading.Barrier(n)

    def take() -> None:
        start.wait()
        try:
            won.append(lease.acquire(folder, "run s"))
        except lease.LeaseHeld as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, errors


def test_a_live_holder_blocks_and_a_killed_one_is_taken_over(tmp_path, caplog):
    folder = str(tmp_path / "runs" / "s")
    proc = _holder(folder)
    try:
        with pytest.raises(
            lease.LeaseHeld, match=rf"run s is in use by another job \(host .*, pid {proc.pid}, started "
        ):
            lease.acquire(folder, "run s")
        assert not (tmp_path / "runs" / "s").exists()  # the refused job wrote nothing
    finally:
        proc.kill()
        proc.wait()
    caplog.set_level("WARNING", logger="mnist_ray.files.lease")
    held = lease.acquire(folder, "run s")  # its pid is dead: taken over with one warning line
    warnings = [r.getMessage() for r in caplog.records if r.name == "mnist_ray.files.lease"]
    assert len(warnings) == 1 and warnings[0].startswith("warning: took over run s from a job that is gone")
    assert f"pid {proc.pid} is not running" in warnings[0]
    held.release()
    assert not Path(lease.lease_path(folder)).exists()


def test_a_reused_pid_a_rebooted_host_and_a_silent_remote_holder_are_stale(tmp_path):
    me = lease.Holder.me()
    path = Path(lease.lease_path(str(tmp_path / "s")))

    def plant(age_s: float = 0, **fields) -> None:
        path.write_text(json.dumps({**me.__dict__, "token": "other", **fields}))
        os.utime(path, (time.time() - age_s, time.time() - age_s))

    # This very pid, but recorded with another start time: the pid belongs to a newer process.
    plant(process_start=(me.process_start or 0) - 1)
    lease.acquire(str(tmp_path / "s"), "run s").release()
    plant(boot_id="another-boot")
    lease.acquire(str(tmp_path / "s"), "run s").release()
    # Another host: stale only once it has not been refreshed for STALE_AFTER_S.
    plant(host="elsewhere", boot_id="x", pid=1)
    with pytest.raises(lease.LeaseHeld, match="host elsewhere, pid 1"):
        lease.acquire(str(tmp_path / "s"), "run s")
    plant(age_s=lease.STALE_AFTER_S + 5, host="elsewhere", boot_id="x", pid=1)
    lease.acquire(str(tmp_path / "s"), "run s").release()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_jobs_starting_together_exactly_one_holds_the_lease(where, tmp_path, s3_server):
    folder = str(tmp_path / "s") if where == "local" else storage.join(make_bucket("mnist-ray-leases"), "race", "s")
    won, errors = _race(folder)
    try:
        assert len(won) == 1 and len(errors) == 7, errors
        assert all("run s is in use by another job" in e for e in errors)
    finally:
        for held in won:
            held.release()
    assert not storage.exists(lease.lease_path(folder))


def test_an_s3_lease_is_refreshed_and_a_stale_one_taken_over_by_its_etag(s3_server, monkeypatch, caplog):
    folder = storage.join(make_bucket("mnist-ray-leases"), "refresh", "s")
    monkeypatch.setattr(lease, "REFRESH_S", 0.2)
    held = lease.acquire(folder, "run s")
    first = held.version
    time.sleep(1.0)
    assert held.version != first  # refreshed: a new ETag, written conditionally on the old one
    with pytest.raises(lease.LeaseHeld, match="in use by another job"):
        lease.acquire(folder, "run s")
    held._stop.set()  # the holder stops refreshing (a crashed job on another host) ...
    body = json.loads(storage.read_text(lease.lease_path(folder)))
    storage.write_text(lease.lease_path(folder), json.dumps({**body, "host": "elsewhere", "boot_id": "x"}))
    monkeypatch.setattr(lease, "STALE_AFTER_S", 1.0)
    time.sleep(2.5)  # ... judged by S3's own clock (Last-Modified against Date)
    caplog.set_level("WARNING", logger="mnist_ray.files.lease")
    taken = lease.acquire(folder, "run s")
    assert any("not refreshed for" in r.getMessage() for r in caplog.records)
    taken.release()
    assert not storage.exists(lease.lease_path(folder))


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("train.py", ["--preset", "smoke", "--name", "s", "--output", "{out}"]),
        ("tune.py", ["--name", "s", "--output", "{out}"]),
        ("export.py", ["--checkpoint", "{ckpt}", "--output", "{out}/s", "--format", "pt2"]),
    ],
)
def test_a_job_whose_output_is_held_exits_2_naming_the_holder(script, args, tmp_path, tiny_run, ray_session):
    out = tmp_path / "out"
    out.mkdir()
    proc = _holder(str(out / "s"))
    try:
        argv = [a.format(out=out, ckpt=tiny_run[2].best_checkpoint) for a in args]
        result = helpers.run_job(script, *argv, env=helpers.cluster_env(ray_session), timeout=120)
        helpers.assert_one_line_error(result, f"is in use by another job (host {os.uname().nodename}, pid {proc.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".s.lease"]  # nothing written by the refused job
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
