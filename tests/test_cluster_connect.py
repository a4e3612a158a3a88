"""Which Ray a job uses: Ray's rule resolved before ``ray.init``, a dead address failing at once, one status line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mnist_ray.cluster import connection
from mnist_ray.errors import ResourceError
from mnist_ray.ray_workarounds import address_file, local_start, placement_groups
from tests.conftest import REPO
from tests.ray_head import free_ports

CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's environment: no .venv on PATH, HOME and Ray's temp dir of its own."""
    (tmp_path / "home").mkdir(exist_ok=True)
    env = {"PATH": CLEAN_PATH, "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8", "RAY_TMPDIR": str(tmp_path / "t")}
    return {**env, **extra}


def train_smoke(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    """``jobs/train.py --preset smoke`` as a user runs it; returns the result and its wall seconds."""
    cmd = [sys.executable, "jobs/train.py", "--preset", "smoke", "--output", str(tmp_path / "runs"), "--name", "x"]
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return out, time.monotonic() - start


def assert_failed_fast_writing_nothing(out: subprocess.CompletedProcess, seconds: float, tmp_path: Path) -> str:
    """Exit 2 within 30 s, one ``error:`` line, no run written; returns that line."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert seconds < 30
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    runs = tmp_path / "runs"
    assert not (runs / "x").exists() and not [p for p in runs.rglob("*") if p.is_file()]
    assert "ray: " not in out.stdout  # it never connected
    return lines[0]


def test_a_stale_address_file_fails_at_once(tmp_path):
    """A head that died leaves ray_current_cluster behind; ray.init() would retry it for minutes."""
    (dead,) = free_ports(1)
    stale = tmp_path / "t" / "ray" / "ray_current_cluster"
    stale.parent.mkdir(parents=True)
    stale.write_text(f"127.0.0.1:{dead}")
    out, seconds = train_smoke(tmp_path, job_env(tmp_path))
    line = assert_failed_fast_writing_nothing(out, seconds, tmp_path)
    assert f"127.0.0.1:{dead}" in line and str(stale) in line and "make cluster-up" in line
    assert sorted(p.name for p in stale.parent.iterdir()) == ["ray_current_cluster"]  # no Ray session started


def test_ray_address_at_a_dead_port_fails_at_once(tmp_path):
    (dead,) = free_ports(1)
    out, seconds = train_smoke(tmp_path, job_env(tmp_path, RAY_ADDRESS=f"127.0.0.1:{dead}"))
    line = assert_failed_fast_writing_nothing(out, seconds, tmp_path)
    assert f"RAY_ADDRESS points at 127.0.0.1:{dead}" in line and "unset RAY_ADDRESS" in line


@contextlib.contextmanager
def _server(kind: str):
    """A live port on loopback that is not Ray: an HTTP server, an SSH-like banner, silence, or an instant close."""
    import http.server
    import socket

    if kind == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
        return
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                if kind == "ssh":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                if kind == "close":
                    conn.close()
                else:
                    held.append(conn)  # silent: accepted, never answered

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("http", "answers HTTP"),
        ("ssh", "answers SSH (SSH-2.0-OpenSSH_9.2p1"),
        ("silent", "accepts connections but says nothing"),
        ("close", "closes connections at once"),
    ],
)
def test_a_live_port_that_is_not_ray_is_one_line_within_30_s(tmp_path, kind, said):
    with _server(kind) as port:
        out, seconds = train_smoke(tmp_path, job_env(tmp_path, RAY_ADDRESS=f"127.0.0.1:{port}"))
    line = assert_failed_fast_writing_nothing(out, seconds, tmp_path)
    assert f"RAY_ADDRESS points at 127.0.0.1:{port}, which {said}" in line, line
    assert "that is not a Ray GCS" in line


def test_a_gcs_that_wants_a_token_this_job_lacks_is_the_token_error(tmp_path, ray_session):
    gcs = ray_session.get_runtime_context().gcs_address
    out, seconds = train_smoke(tmp_path, job_env(tmp_path, RAY_ADDRESS=gcs))  # no RAY_AUTH_MODE=token
    line = assert_failed_fast_writing_nothing(out, seconds, tmp_path)
    assert line == (
        f"error: the cluster at {gcs} requires its token: set RAY_AUTH_MODE=token and put the token in "
        "~/.ray/auth_token (or RAY_AUTH_TOKEN)"
    )


def test_a_job_server_url_in_ray_address_is_refused_with_the_fix(tmp_path):
    """The README exports RAY_ADDRESS=http://...:8265 for ray job submit; a job run directly cannot use it."""
    out, seconds = train_smoke(tmp_path, job_env(tmp_path, RAY_ADDRESS="http://127.0.0.1:8265"))
    line = assert_failed_fast_writing_nothing(out, seconds, tmp_path)
    assert "job server URL" in line and "mnist_ray.submit" in line


@pytest.mark.parametrize(
    ("ray_address", "recorded", "expected"),
    [
        (None, None, connection.Target(None, "")),
        ("local", "127.0.0.1:6379", connection.Target(None, "RAY_ADDRESS=local")),
        ("10.0.0.5:6379", "127.0.0.1:6379", connection.Target("10.0.0.5:6379", "RAY_ADDRESS")),
        (None, "127.0.0.1:6379", connection.Target("127.0.0.1:6379", "")),
        ("auto", "127.0.0.1:6379", connection.Target("127.0.0.1:6379", "")),
    ],
)
def test_resolve_follows_rays_rule(monkeypatch, tmp_path, ray_address, recorded, expected):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    if ray_address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", ray_address)
    assert address_file.path() == tmp_path / "ray" / "ray_current_cluster"
    if recorded:
        address_file.path().parent.mkdir()
        address_file.path().write_text(recorded + "\n")
    target = connection.resolve()
    assert target.address == expected.address
    assert target.source.startswith(expected.source)


def test_auto_without_a_recorded_head_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(ResourceError, match="RAY_ADDRESS=auto"):
        connection.resolve()


@pytest.mark.slow
def test_a_local_start_says_so_in_one_line(tmp_path):
    """No RAY_ADDRESS, no address file: a new local instance on loopback, with the CPUs it was given.

    It has Ray's AutoscalingCoordinator started before any fit or evaluation asks for it (bench/start_levers.py).
    """
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    code = (
        "from mnist_ray.cluster import connection; connection.connect(num_cpus=1); import ray\n"
        "ray.get_actor('AutoscalingCoordinator', namespace='AutoscalingCoordinator'); ray.shutdown()"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=job_env(tmp_path, RAY_TMPDIR=ray_tmp),  # no loopback setting: the job puts its own Ray there
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("ray: ")]
    assert len(lines) == 1, out.stdout
    pattern = rf"ray: started a local instance \(1 CPU\) on 127\.0\.0\.1 \(RAY_ADDRESS unset and no {ray_tmp}/ray/\S+\)"
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert not os.path.exists(os.path.join(ray_tmp, "ray", "ray_current_cluster"))


TWO_RAYS = """
import json, os
from mnist_ray.cluster import connection
from mnist_ray.ray_workarounds import placement_groups
connection.connect(num_cpus=1)
import ray
from ray.util.state import list_nodes

@ray.remote(num_cpus=0)
def probe():
    return os.environ.get("RAY_ADDRESS"), len(list_nodes())  # the state API resolves its address as Ray Train does

# the driver's own state API calls: a group no actor uses, freed after a sweep (it used to guess "auto" and fail)
orphan = ray.util.placement_group([{"CPU": 1}])
ray.get(orphan.ready(), timeout=60)
freed = placement_groups.free_orphaned_placement_groups(settle_s=0.2, wait_s=0)
gcs = ray.get_runtime_context().gcs_address
print(json.dumps([gcs, *ray.get(probe.remote()), os.environ.get("RAY_ADDRESS"), freed]))
"""


@pytest.mark.usefixtures("ray_session")  # a second Ray instance on this machine while the snippet starts its own
def test_a_local_instance_beside_another_gives_its_processes_their_own_address(tmp_path):
    """Ray Train's placement-group cleaner asks the state API with no address; with two Rays that used to fail.

    So did the driver's own post-sweep check, quietly freeing nothing."""
    env = {**job_env(tmp_path), "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp")}
    out = subprocess.run(
        [sys.executable, "-c", TWO_RAYS], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    gcs, seen_by_worker, nodes, driver_env, freed = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen_by_worker == gcs and nodes == 1  # its own cluster, found without guessing
    assert driver_env is None  # the driver's own environment is left as it was
    assert freed == 1  # the driver's state API calls name their own cluster too
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


# A local instance that prefers the free port given (8265 in real use) for its dashboard; prints the port it got.
PREFERRED_DASHBOARD = """
import sys
from mnist_ray.cluster import connection
connection.DASHBOARD_PORT = int(sys.argv[1])
connection.connect(num_cpus=1)
import ray
print(ray._private.worker.get_dashboard_url().rsplit(":", 1)[1])
"""


def test_two_local_starts_at_once_both_get_a_dashboard(tmp_path):
    """Both found the preferred port free and the second start failed on it; a machine-wide lock serializes them."""
    port = free_ports(1)[0]  # free now, as 8265 is on a machine without Ray
    env = {**job_env(tmp_path), "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp")}
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", PREFERRED_DASHBOARD, str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    got = [p.communicate(timeout=120)[0].strip().splitlines() for p in starts]
    assert [p.returncode for p in starts] == [0, 0], got
    ports = sorted(int(lines[-1]) for lines in got)
    assert port in ports and len(set(ports)) == 2  # one took the preferred port, the other another free one
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_free_ports_pass_over_rays_own_and_those_already_taken():
    """CI once drew 52365, the dashboard agent's default, as a GCS port, and ray.init refused the start."""
    with local_start.one_local_start_at_a_time(True):
        gcs = local_start.free_port(None)
        assert gcs not in local_start.ray_default_ports()
        assert local_start.free_port(gcs) != gcs  # preferred, but this start's GCS port already holds it
        with pytest.raises(OSError, match="outside Ray's own"):  # every offer is passed over, none returned
            local_start.free_port(None, avoid=frozenset(range(1, 65536)))


@pytest.mark.usefixtures("ray_session")
def test_placement_groups_no_actor_uses_are_freed_and_used_ones_kept():
    """What a sweep does after its trials: a group a stopped trial's controller left behind gives its CPU back."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    orphan, used = placement_group([{"CPU": 1}]), placement_group([{"CPU": 1}])
    ray.get([orphan.ready(), used.ready()], timeout=60)
    holder = ray.remote(num_cpus=1)(Holder).options(scheduling_strategy=PlacementGroupSchedulingStrategy(used)).remote()
    try:
        ray.get(holder.ping.remote(), timeout=60)
        assert placement_groups.free_orphaned_placement_groups(settle_s=0.2, wait_s=0) >= 1  # wait_s=0: no watching
        assert placement_group_table(orphan)["state"] == "REMOVED"
        assert placement_group_table(used)["state"] == "CREATED"
        # A stopped trial's worker still shutting down when the sweep returns: its group goes once it is gone.
        threading.Timer(1.0, ray.kill, args=(holder,)).start()
        assert placement_groups.free_orphaned_placement_groups(settle_s=0.2, wait_s=30) == 1
        assert placement_group_table(used)["state"] == "REMOVED"
    finally:
        ray.kill(holder)
        with contextlib.suppress(Exception):
            remove_placement_group(used)
        with contextlib.suppress(Exception):
            remove_placement_group(orphan)


@pytest.mark.usefixtures("ray_session")
def test_during_a_sweep_only_worker_groups_unused_past_the_grace_are_freed():
    """The mid-sweep reaper: a worker group left unused is freed once its grace is over; a group an actor uses,
    and a memory-only group (a Tune trial's, created before its actor), are kept."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    orphan, used = placement_group([{"CPU": 0.5}]), placement_group([{"CPU": 0.5}])
    trial = placement_group([{"memory": 2**20}])
    ray.get([orphan.ready(), used.ready(), trial.ready()], timeout=60)
    holder = ray.remote(num_cpus=0.5)(Holder).options(scheduling_strategy=PlacementGroupSchedulingStrategy(used))
    holder = holder.remote()
    try:
        ray.get(holder.ping.remote(), timeout=60)
        reaper = placement_groups.PlacementGroupReaper(grace_s=30)
        assert reaper.check(now=100.0) == 0  # unused from now on, but within its grace
        assert placement_group_table(orphan)["state"] == "CREATED"
        assert reaper.check(now=131.0) == 1
        assert placement_group_table(orphan)["state"] == "REMOVED"
        assert placement_group_table(used)["state"] == "CREATED"
        assert placement_group_table(trial)["state"] == "CREATED"
        late = placement_group([{"CPU": 0.5}])  # the running thread frees it too, and says so
        ray.get(late.ready(), timeout=60)
        said = []
        with placement_groups.PlacementGroupReaper(grace_s=0.5, every_s=0.3, on_free=said.append):
            deadline = time.monotonic() + 30
            while placement_group_table(late)["state"] != "REMOVED" and time.monotonic() < deadline:
                time.sleep(0.2)
        assert placement_group_table(late)["state"] == "REMOVED" and said == [1]
    finally:
        ray.kill(holder)
        for group in (used, trial, orphan):
            with contextlib.suppress(Exception):
                remove_placement_group(group)


class Holder:
    def ping(self) -> bool:
        return True
