"""One job per output: a lease file beside a run, sweep, report, prediction or export folder.

Two jobs with one run name would otherwise train into one folder and interleave its files. A job takes the lease
``<parent>/.<folder>.lease`` before Ray starts and before it writes anything; a second job gets one ``error:``
line naming the holder (host, pid, job id, start time) and exit 2.

- **Atomic.** Locally the lease is hard-linked into place (``os.link`` fails when the name exists, so the lease is
  never seen half-written); on ``s3://`` it is a conditional put (``If-None-Match: *``, through boto3: pyarrow's
  S3 filesystem has no conditional write). Other object stores get a check-then-write, which two jobs started
  at the same moment can both pass.
- **Refreshed** every ``REFRESH_S`` seconds while the job runs (a daemon thread), released when it ends.
- **Stale leases are taken over** with one ``warning:`` line, so a crashed job never blocks its own resume. On
  this host (same host name and boot) a lease is stale as soon as its pid is dead or belongs to a newer process;
  from another host once it has not been refreshed for ``STALE_AFTER_S``, judged by the store's own clock (the
  file's mtime, or S3's ``Last-Modified`` against its ``Date``). A takeover is itself conditional (an ``flock``
  and an inode check locally, ``If-Match`` on the ETag on S3), so of two jobs taking over one wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from mnist_ray.errors import MnistRayError
from mnist_ray.files import storage

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


@dataclass
class _Seen:
    """A lease as read from its store: the holder (None if unreadable), a version for conditional writes, age."""

    holder: Holder | None
    version: object
    age_s: float


class _LocalStore:
    """A lease file on a local or shared filesystem."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def create(self, body: bytes) -> bool:
        """Put the lease in place if there is none; False if one exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(body)
        try:
            os.link(tmp, self.path)  # atomic, and fails if the name exists: never a half-written lease
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> _Seen | None:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                body = f.read()
        except FileNotFoundError:
            return None
        return _Seen(_parse(body), st.st_ino, max(0.0, time.time() - st.st_mtime))

    def replace(self, body: bytes, version: object) -> bool:
        """Replace the lease read as ``version`` (an inode); False if another job replaced it first."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - held open for its lock
        except FileNotFoundError:
            return self.create(body)
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)  # takers of one stale lease queue here; the first one replaces it
            try:
                if os.fstat(f.fileno()).st_ino != version or os.stat(self.path).st_ino != version:
                    return False
            except FileNotFoundError:
                return False
            tmp = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, self.path)
            return True

    def refresh(self, body: bytes, version: object) -> object | None:
        """Touch the lease; None if it is no longer the one this job wrote (taken over)."""
        try:
            if os.stat(self.path).st_ino != version:
                return None
            os.utime(self.path)
        except FileNotFoundError:
            return None
        return version

    def delete(self, version: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == version:
                self.path.unlink()


class _S3Store:
    """A lease object on S3 (or an S3-compatible store), written conditionally through boto3."""

    def __init__(self, uri: str) -> None:
        import boto3

        bucket_key = storage.normalize(uri).split("://", 1)[1]
        self.uri, (self.bucket, _, self.key) = uri, bucket_key.partition("/")
        endpoint, _ = storage._aws_env()
        self.client = boto3.client("s3", endpoint_url=endpoint)

    def _conditional(self, **kw) -> str | None:
        """A conditional put: the new ETag, or None when the precondition failed (another job was first)."""
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, **kw)["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            raise

    def create(self, body: bytes) -> bool:
        return self._conditional(Body=body, IfNoneMatch="*") is not None

    def read(self) -> _Seen | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        body = got["Body"].read()
        server_now = _http_date(got["ResponseMetadata"].get("HTTPHeaders", {}).get("date"))
        age = (server_now or datetime.now(timezone.utc)) - got["LastModified"]
        return _Seen(_parse(body), got["ETag"], max(0.0, age.total_seconds()))

    def replace(self, body: bytes, version: object) -> bool:
        return self._conditional(Body=body, IfMatch=version) is not None

    def refresh(self, body: bytes, version: object) -> object | None:
        return self._conditional(Body=body, IfMatch=version)

    def delete(self, version: object) -> None:
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):
            seen = self.read()
            if seen is not None and seen.version == version:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)


class _OtherStore(_LocalStore):
    """Any other pyarrow filesystem (gs://, ...): no conditional write, so check, then write."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def create(self, body: bytes) -> bool:
        if storage.exists(self.uri):
            return False
        storage.write_bytes(self.uri, body)
        return True

    def read(self) -> _Seen | None:
        if not storage.is_file(self.uri):
            return None
        age = time.time() - (storage.mtime(self.uri) or time.time())
        body = storage.read_bytes(self.uri)
        return _Seen(_parse(body), body, max(0.0, age))

    def replace(self, body: bytes, version: object) -> bool:
        storage.write_bytes(self.uri, body)
        return True

    def refresh(self, body: bytes, version: object) -> object | None:
        storage.write_bytes(self.uri, body)
        return body

    def delete(self, version: object) -> None:
        with contextlib.suppress(storage.StorageError):
            if storage.read_bytes(self.uri) == version:
                storage.remove_file(self.uri)


def _parse(body: bytes) -> Holder | None:
    try:
        return Holder(**json.loads(body))
    except (ValueError, TypeError):
        return None


def _http_date(text: str | None) -> datetime | None:
    from email.utils import parsedate_to_datetime

    with contextlib.suppress(TypeError, ValueError):
        return parsedate_to_datetime(text) if text else None
    return None


def lease_path(folder: str) -> str:
    """Where the lease of ``folder`` lives: ``<parent>/.<name>.lease``, outside the folder it guards."""
    folder = storage.normalize(folder)
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return storage.join(storage.parent(folder), f".{name}.lease")


def _store(path: str) -> _LocalStore | _S3Store | _OtherStore:
    if not storage.is_uri(path):
        return _LocalStore(path)
    return _S3Store(path) if path.startswith("s3://") else _OtherStore(path)


class Lease:
    """A held lease: refreshed on a daemon thread until :meth:`release`."""

    def __init__(self, store, holder: Holder, version: object, what: str) -> None:
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
    store = _store(path)
    me = Holder.me()
    body = json.dumps(asdict(me)).encode()
    with storage._errors(path):
        for _ in range(3):  # a lease released or taken over between our read and write: look again
            if store.create(body):
                return Lease(store, me, _version_after_create(store, me), what)
            seen = store.read()
            if seen is None:
                continue
            if seen.holder is not None and seen.holder.token == me.token:
                return Lease(store, me, seen.version, what)
            reason = gone_reason(seen.holder, seen.age_s, me) if seen.holder else _unreadable(seen.age_s)
            if reason is None:
                held_by = seen.holder.describe() if seen.holder else "a job whose lease is being written"
                raise LeaseHeld(
                    f"{what} is in use by another job ({held_by}; lease {path}): wait for it to end, or write to "
                    "another name or output"
                )
            if store.replace(body, seen.version):
                gone = seen.holder.describe() if seen.holder else "an unreadable lease"
                log.warning("warning: took over %s from a job that is gone (%s: %s)", what, gone, reason)
                return Lease(store, me, _version_after_create(store, me), what)
    raise LeaseHeld(f"{what}: its lease {path} keeps changing hands; try again")


def _unreadable(age_s: float) -> str | None:
    """A lease that does not parse: being written right now, or left damaged long ago."""
    return f"unreadable and {age_s:.0f} s old" if age_s > STALE_AFTER_S else None


def _version_after_create(store, me: Holder) -> object:
    seen = store.read()
    if seen is None or seen.holder is None or seen.holder.token != me.token:
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
