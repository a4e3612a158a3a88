"""Where a lease lives, and how each store writes it atomically and replaces it only if it is the one that was read.

- **Local or shared filesystem.** The lease is hard-linked into place (``os.link`` fails when the name exists, so
  the lease is never seen half-written); a takeover holds an ``flock`` and checks the inode it read.
- **S3** (or an S3-compatible store): a conditional put (``If-None-Match: *``, through boto3: pyarrow's S3
  filesystem has no conditional write); a takeover or refresh is ``If-Match`` on the ETag it read.
- **Any other object store**: a check-then-write, which two jobs started at the same moment can both pass.

A store deals in bytes: :mod:`mnist_ray.files.lease` decides what they say and whether the holder is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mnist_ray.files import storage


@dataclass
class Seen:
    """A lease as read from its store: its bytes, a version for conditional writes, and its age by the store's clock."""

    body: bytes
    version: object
    age_s: float


class LocalStore:
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

    def read(self) -> Seen | None:
        """The lease, its inode as version and its age from its mtime; None when there is none."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                body = f.read()
        except FileNotFoundError:
            return None
        return Seen(body, st.st_ino, max(0.0, time.time() - st.st_mtime))

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
        """Remove the lease if it is still ``version``."""
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == version:
                self.path.unlink()


class S3Store:
    """A lease object on S3 (or an S3-compatible store), written conditionally through boto3."""

    def __init__(self, uri: str) -> None:
        import boto3

        bucket_key = storage.normalize(uri).split("://", 1)[1]
        self.uri, (self.bucket, _, self.key) = uri, bucket_key.partition("/")
        self.client = boto3.client("s3", endpoint_url=storage.s3_endpoint())

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
        """Put the lease in place if there is none; False if one exists."""
        return self._conditional(Body=body, IfNoneMatch="*") is not None

    def read(self) -> Seen | None:
        """The lease, its ETag as version and its age (``Last-Modified`` against the server's ``Date``)."""
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
        return Seen(body, got["ETag"], max(0.0, age.total_seconds()))

    def replace(self, body: bytes, version: object) -> bool:
        """Replace the lease read as ``version`` (an ETag); False if another job replaced it first."""
        return self._conditional(Body=body, IfMatch=version) is not None

    def refresh(self, body: bytes, version: object) -> object | None:
        """Rewrite the lease: its new ETag, or None if it is no longer the one this job wrote."""
        return self._conditional(Body=body, IfMatch=version)

    def delete(self, version: object) -> None:
        """Remove the lease if it is still ``version``."""
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):
            seen = self.read()
            if seen is not None and seen.version == version:
                self.client.delete_object(Bucket=self.bucket, Key=self.key)


class OtherStore(LocalStore):
    """Any other pyarrow filesystem (gs://, ...): no conditional write, so check, then write."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def create(self, body: bytes) -> bool:
        if storage.exists(self.uri):
            return False
        storage.write_bytes(self.uri, body)
        return True

    def read(self) -> Seen | None:
        if not storage.is_file(self.uri):
            return None
        age = time.time() - (storage.mtime(self.uri) or time.time())
        body = storage.read_bytes(self.uri)
        return Seen(body, body, max(0.0, age))

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


Store = LocalStore | S3Store | OtherStore


def store_for(path: str) -> Store:
    """The store for the lease file ``path``: local, S3, or any other object store."""
    if not storage.is_uri(path):
        return LocalStore(path)
    return S3Store(path) if path.startswith("s3://") else OtherStore(path)


def _http_date(text: str | None) -> datetime | None:
    """An HTTP ``Date`` header as a datetime; None when absent or malformed."""
    from email.utils import parsedate_to_datetime

    with contextlib.suppress(TypeError, ValueError):
        return parsedate_to_datetime(text) if text else None
    return None
