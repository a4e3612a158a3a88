"""The local Ray head behind ``make cluster-up`` / ``make cluster-down``, also the test suite's real head.

``ray start --head --block`` runs in its own session with this interpreter's bin folder first on its PATH: the job
server runs each entrypoint with ``shell=True`` in the head's environment, so a job's ``python`` is this one.
Stopping signals that session only, never ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from mnist_ray.cluster.connection import DASHBOARD_PORT, GCS_PORT, LOOPBACK, reachable
from mnist_ray.errors import EXIT_USAGE, MnistRayError, ResourceError
from mnist_ray.ray_workarounds import address_file

HEAD_DIR = Path(".ray-head")
"""Where ``make cluster-up`` records its head: ``pid``, ``head.json``, ``ray.log`` (git-ignored)."""
BIN = Path(sys.executable).parent  # not resolved: .venv/bin/python is a symlink to the base interpreter


def head_env(base: Mapping[str, str], bin_dir: Path | None = None) -> dict[str, str]:
    """The head's environment. Its jobs run ``python`` from its PATH, so this interpreter's bin folder goes first."""
    bin_dir = bin_dir or BIN
    env = {k: v for k, v in base.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        PATH=os.pathsep.join([str(bin_dir), base.get("PATH", os.defpath)]),
        RAY_AUTH_MODE="token",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # every Ray process advertises 127.0.0.1, not this host's address
    )
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "5")  # SIGTERM drains (for Serve) up to 30 s by default
    return env


def head_command(port: int = GCS_PORT, dashboard_port: int = DASHBOARD_PORT, args: Sequence[str] = ()) -> list[str]:
    """``ray start`` for a head on loopback; ``args`` adds ports, ``--num-cpus``, ``--temp-dir``."""
    return [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={LOOPBACK}",
        f"--port={port}",
        f"--dashboard-host={LOOPBACK}",
        f"--dashboard-port={dashboard_port}",
        "--disable-usage-stats",
        *args,
    ]


def ensure_token(env: Mapping[str, str]) -> bool:
    """Create ``~/.ray/auth_token`` with Ray's generator unless a token is available; True if it created one."""
    token_file = Path(env.get("HOME", Path.home())) / ".ray" / "auth_token"
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH") or token_file.is_file():
        return False
    cmd = [str(BIN / "ray"), "get-auth-token", "--generate"]
    out = subprocess.run(cmd, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # no echo
    if out.returncode != 0:
        raise ResourceError(f"could not create {token_file}: {out.stderr.strip()[-500:]}")
    return True


def start_head(
    state: Path = HEAD_DIR,
    port: int = GCS_PORT,
    dashboard_port: int = DASHBOARD_PORT,
    args: Sequence[str] = (),
    temp_dir: str | None = None,
    timeout: float = 120,
) -> dict:
    """Start the head, record it in ``state``, and return once its dashboard answers and its address is recorded."""
    if _running(state):
        raise ResourceError(
            f"the Ray head recorded in {state}/ is already running (pid {_running(state)}): stop it first"
        )
    for p in (port, dashboard_port):
        if reachable(LOOPBACK, p, timeout=0.5):
            raise ResourceError(f"port {p} on {LOOPBACK} is in use (another Ray?): stop that first")
    state.mkdir(parents=True, exist_ok=True)
    env = head_env(os.environ)
    token_created = ensure_token(env)
    cmd = head_command(port, dashboard_port, [*args, *([f"--temp-dir={temp_dir}"] if temp_dir else [])])
    with open(state / "ray.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    head = {
        "pid": proc.pid,
        "gcs": f"{LOOPBACK}:{port}",
        "dashboard": f"http://{LOOPBACK}:{dashboard_port}",
        "address_file": str(Path(temp_dir) / "ray_current_cluster" if temp_dir else address_file.path()),
        "python": str(BIN / "python"),
        "token_created": token_created,
    }
    (state / "head.json").write_text(json.dumps(head, indent=1))
    (state / "pid").write_text(f"{proc.pid}\n")
    try:
        _wait_ready(proc, head, state / "ray.log", timeout)
    except BaseException:
        stop_head(state)
        raise
    return head


def _wait_ready(proc: subprocess.Popen, head: dict, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ResourceError(f"ray start exited with {proc.returncode}; the end of {log}: {log.read_text()[-1500:]}")
        file = Path(head["address_file"])
        if file.is_file() and file.read_text().strip() == head["gcs"] and _answers(head["dashboard"]):
            return
        time.sleep(1)
    raise ResourceError(f"the Ray head did not come up within {timeout:.0f}s; see {log}")


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/api/version", timeout=2)
    except urllib.error.HTTPError:  # any HTTP answer (401 without the token) means it is up
        return True
    except OSError:
        return False
    return True


def _running(state: Path) -> int | None:
    """The recorded head's pid if that process still runs ``ray start``."""
    try:
        pid = int((state / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"start" in cmdline and any(arg.endswith(b"ray") for arg in cmdline) else None


def stop_head(state: Path = HEAD_DIR, grace: float = 30) -> int | None:
    """Stop the recorded head and everything in its session; None if none was running.

    SIGTERM to ``ray start`` alone drains the node (up to 5 s, see ``head_env``) and stops its processes in order;
    a signal to the whole group instead leaves it hanging. What is left after ``grace`` gets SIGKILL.
    """
    pid = _running(state)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and session_processes(pid):
            time.sleep(0.5)
        for p in session_processes(pid):  # workers run in their own process groups, but in the head's session
            _signal(p, signal.SIGKILL)
    info = state / "head.json"
    if info.is_file():
        head = json.loads(info.read_text())
        file = Path(head["address_file"])
        if file.is_file() and file.read_text().strip() == head["gcs"]:
            file.unlink()  # else the next ray.init() on this machine would try the dead head
    for name in ("pid", "head.json"):
        (state / name).unlink(missing_ok=True)
    return pid


def session_processes(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``sid``."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(sid, os.WNOHANG)  # reap the head if this process started it (the tests' RayHead)
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp session
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(stat.parent.name))
    return out


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> int:
    """``python -m mnist_ray.head up|down``: start or stop the local head recorded in ``--state-dir``."""
    p = argparse.ArgumentParser(prog="python -m mnist_ray.head", description=main.__doc__)
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--state-dir", type=Path, default=HEAD_DIR, help=f"where the head is recorded [{HEAD_DIR}]")
    args = p.parse_args(argv)
    try:
        if args.action == "down":
            pid = stop_head(args.state_dir)
            print(f"stopped the Ray head (pid {pid})" if pid else f"no Ray head recorded in {args.state_dir}/")
            return 0
        head = start_head(args.state_dir)
    except MnistRayError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return EXIT_USAGE
    if head["token_created"]:
        print("created the cluster's token in ~/.ray/auth_token")
    print(
        f"started a Ray head (pid {head['pid']}, log {args.state_dir / 'ray.log'}): GCS {head['gcs']}, "
        f"dashboard and job server {head['dashboard']}, token auth; its jobs run {head['python']}\n"
        f"submit with: export RAY_AUTH_MODE=token RAY_ADDRESS={head['dashboard']}; "
        f"{os.path.relpath(BIN / 'ray')} job submit --working-dir . -- python jobs/train.py\n"
        "stop it with: make cluster-down"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
