"""One job per output: a lease file beside a run, sweep, report, prediction or export folder.

Two jobs with one run name would otherwise train into one folder and interleave its files. A job takes the lease
``<parent>/.<folder>.lease`` before Ray starts and before it writes anything; a second job gets one ``error:``
line naming the holder (host, pid, job id, start time) and exit 2.

- **Atomic**, and a takeover conditional, so of two jobs taking one lease one wins: how each store does it is
  :mod:`mnist_ray.files.lease_stores`.
- **Refreshed** every ``REFRESH_S`` seconds while the job runs (a daemon thread), released when it ends.
- **Stale leases are taken over** with one ``warning:`` line, so a crashed job never blocks its own resume. On
  this host (same host name and boot) a lease is stale as soon as its pid is dead or belongs to a newer process;
  from another host once it has not been refreshed for ``STALE_AFTER_S``, judged by the store's own clock (the
  file's mtime, or S3's ``Last-Modified`` against its ``Date``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from mnist_ray.errors import MnistRayError
from mnist_ray.files import storage
from mnist_ray.files.lease_stores import Store, store_for

log = logging.getLogger(__name__)

REFRESH_S = 15.0
"""Seconds between refreshes of a held lease."""
STALE_AFTER_S = 60.0
"""A lease from another host not refreshed for this long belongs to a job that is gone."""


class LeaseHeld(MnistRayError):
    """Another live job holds the output this job would write."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: enough to find the job (host, pid, job id) and to tell a reused pid from it."""

    host: str
    pid: int
    started: str
    """UTC start time of the job, ISO 8601."""
    token: str
    """Unique to this holding: a job recognises its own lease by it."""
    job_id: str | None = None
    """The job server's submission id, when the job was submitted with ``ray job submit``."""
    boot_id: str | None = None
    process_start: int | None = None
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat``): a reused pid has another."""
    refreshed: str | None = None
    """UTC time of the last refresh (each one rewrites the lease on an object store, so its ETag changes)."""

    def describe(self) -> str:
        job = f", job {self.job_id}" if self.job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, started {self.started}"

    @staticmethod
    def me() -> Holder:
        return Holder(
            host=socket.gethostname(),
            pid=os.getpid(),
            started=_utc_now(),
            token=uuid.uuid4().hex,
            job_id=_job_id(),
            boot_id=_boot_id(),
            process_start=_process_start(os.getpid()),
        )


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_id() -> str | None:
    """The job server's submission id of this driver, if it was started by the job server."""
    try:
        return json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"])["metadata"]["job_submission_id"]
    except (KeyError, ValueError, TypeError):
        return None


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot; None when there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def gone_reason(holder: Holder, age_s: float, now: Holder) -> str | None:
    """Why ``holder`` is gone (its lease may be taken over), or None while it may still be running."""
    same_host = holder.host == now.host and holder.boot_id is not None and now.boot_id is not None
    if same_host and holder.boot_id == now.boot_id:
        start = _process_start(holder.pid)
        if start is None:
            return f"pid {holder.pid} is not running"
        if holder.process_start is not None and start != holder.process_start:
            return f"pid {holder.pid} now belongs to a newer process"
        return None
    if holder.host == now.host and holder.boot_id and now.boot_id and holder.boot_id != now.boot_id:
        return "the host has rebooted since"
    if age_s > STALE_AFTER_S:
        return f"not refreshed for {age_s:.0f} s"
    return None


def _parse(body: bytes) -> Holder | None:
    """The holder a lease names; None when it does not parse (being written, or damaged)."""
    try:
        return Holder(**json.loads(body))
    except (ValueError, TypeError):
        return None


def lease_path(folder: str) -> str:
    """Where the lease of ``folder`` lives: ``<parent>/.<name>.lease``, outside the folder it guards."""
    folder = storage.normalize(folder)
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return storage.join(storage.parent(folder), f".{name}.lease")


class Lease:
    """A held lease: refreshed on a daemon thread until :meth:`release`."""

    def __init__(self, store: Store, holder: Holder, version: object, what: str) -> None:
        self.store, self.holder, self.version, self.what = store, holder, version, what
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="mnist-ray-lease", daemon=True)
        self._thread.start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            body = json.dumps(asdict(replace(self.holder, refreshed=_utc_now()))).encode()
            try:
                version = self.store.refresh(body, self.version)
            except Exception as exc:  # noqa: BLE001 - a failed refresh is retried; the job goes on
                log.debug("lease refresh of %s failed: %s", self.what, exc)
                continue
            if version is None:
                log.warning("warning: the lease of %s was taken over by another job; this job goes on", self.what)
                return
            self.version = version

    def release(self) -> None:
        """Stop refreshing and remove the lease if it is still this job's."""
        self._stop.set()
        with contextlib.suppress(Exception):  # a lease left behind is taken over: never fail a finished job on it
            self.store.delete(self.version)


def acquire(folder: str, what: str) -> Lease:
    """Take the lease of ``folder`` for this job, or raise :class:`LeaseHeld` naming the job that holds it.

    ``what`` names the output in messages, e.g. ``run s`` or ``report nightly``.
    """
    path = lease_path(folder)
    store = store_for(path)
    me = Holder.me()
    body = json.dumps(asdict(me)).encode()
    with storage.errors(path):
        for _ in range(3):  # a lease released or taken over between our read and write: look again
            if store.create(body):
                return Lease(store, me, _version_after_create(store, me), what)
            seen = store.read()
            if seen is None:
                continue
            holder = _parse(seen.body)
            if holder is not None and holder.token == me.token:
                return Lease(store, me, seen.version, what)
            reason = gone_reason(holder, seen.age_s, me) if holder else _unreadable(seen.age_s)
            if reason is None:
                held_by = holder.describe() if holder else "a job whose lease is being written"
                raise LeaseHeld(
                    f"{what} is in use by another job ({held_by}; lease {path}): wait for it to end, or write to "
                    "another name or output"
                )
            if store.replace(body, seen.version):
                gone = holder.describe() if holder else "an unreadable lease"
                log.warning("warning: took over %s from a job that is gone (%s: %s)", what, gone, reason)
                return Lease(store, me, _version_after_create(store, me), what)
    raise LeaseHeld(f"{what}: its lease {path} keeps changing hands; try again")


def _unreadable(age_s: float) -> str | None:
    """A lease that does not parse: being written right now, or left damaged long ago."""
    return f"unreadable and {age_s:.0f} s old" if age_s > STALE_AFTER_S else None


def _version_after_create(store: Store, me: Holder) -> object:
    """The version of the lease ``me`` just wrote; :class:`LeaseHeld` if another job's write replaced it."""
    seen = store.read()
    holder = _parse(seen.body) if seen is not None else None
    if holder is None or holder.token != me.token:
        raise LeaseHeld("the lease was taken by another job at the same moment; try again")
    return seen.version


@contextlib.contextmanager
def holding(folders: list[str], what: list[str]) -> Iterator[list[Lease]]:
    """Hold the leases of ``folders`` (named ``what``) for the duration of the block; all or none."""
    with contextlib.ExitStack() as stack:
        leases = []
        for folder, name in zip(folders, what, strict=True):
            lease = acquire(folder, name)
            stack.callback(lease.release)
            leases.append(lease)
        yield leases
