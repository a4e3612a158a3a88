"""Every job's inputs and outputs: local paths and object-store URIs (``s3://``, ``gs://``) through ``pyarrow.fs``.

Paths and URIs, the filesystem that holds one, and reading, writing and listing there. Local writes are atomic
(temp file + rename); on an object store one upload is atomic by nature. Folders published complete-or-absent
are :mod:`mnist_ray.files.publishing`; full disks and quotas are :mod:`mnist_ray.files.capacity`. S3 endpoint,
region and credentials come from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, keys, profiles).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow
import pyarrow.fs as pafs

from mnist_ray.errors import MnistRayError
from mnist_ray.files.atomic import atomic_path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_ONE_SLASH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")  # s3:/bucket, a typo that would write locally
_LOCAL = pafs.LocalFileSystem()
_CHUNK = 8 << 20
# Fail in seconds, not minutes: a short connect timeout and at most 3 attempts (the AWS SDK's standard retries).
_CONNECT_TIMEOUT_S = 5.0
_REQUEST_TIMEOUT_S = 60.0
_ATTEMPTS = 3


class StorageError(MnistRayError):
    """A path or URI cannot be resolved, read or written; the message names the path and the fix."""


def is_uri(path: str) -> bool:
    """True for ``scheme://...`` (an object store or other pyarrow filesystem), False for a local path."""
    return _SCHEME.match(str(path)) is not None


def normalize(path: str) -> str:
    """URIs unchanged but for trailing slashes; ``file://`` and local paths absolute, with ``~`` expanded."""
    path = str(path)
    if _ONE_SLASH.match(path):
        raise StorageError(f"{path}: malformed URI (write scheme://bucket/prefix, e.g. s3://bucket/runs)")
    match = _SCHEME.match(path)
    if match and match.group(1).lower() != "file":
        return f"{match.group(1).lower()}://{match.group(2).rstrip('/')}"
    local = match.group(2) if match else path
    return str(Path(local).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join path segments under ``base``, a local path or a URI."""
    if not is_uri(base):
        return str(Path(base, *parts))
    segments = [base.rstrip("/"), *(p.strip("/") for p in parts)]
    return "/".join(s for s in segments if s)


def parent(path: str) -> str:
    """The folder that receives ``path`` (a local publish assembles its temporary copy there)."""
    if not is_uri(path):
        return str(Path(path).parent)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else path


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``path`` (cached per scheme and bucket) and the path on it."""
    path = normalize(path)
    match = _SCHEME.match(path)
    if not match:
        return _LOCAL, path
    scheme, rest = match.groups()
    bucket, _, key = rest.partition("/")
    if not bucket or "?" in rest:
        raise StorageError(f"{path}: not a valid {scheme}:// URI (write {scheme}://bucket/prefix, no query string)")
    try:
        if scheme == "s3":
            return _s3(bucket, s3_endpoint(), os.environ.get("AWS_ACCESS_KEY_ID")), f"{bucket}/{key}".rstrip("/")
        fs, root = _from_uri(f"{scheme}://{bucket}")
    except (OSError, pyarrow.ArrowException, ValueError) as exc:
        raise StorageError(f"{path}: {_explain(exc, path)}") from None
    return fs, f"{root.rstrip('/')}/{key}" if key else root


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (as the SDKs do)."""
    env = os.environ.get
    return env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL")


@functools.cache
def _s3(bucket: str, endpoint: str | None, key_id: str | None) -> pafs.S3FileSystem:
    """An S3 filesystem for ``bucket`` as ``FileSystem.from_uri`` (Ray's resolver) builds it, but failing fast.

    ``S3FileSystem()`` itself ignores ``AWS_ENDPOINT_URL`` (only ``from_uri`` reads it), so it is passed here;
    on AWS proper the bucket's region is looked up, as ``from_uri`` does. ``key_id`` only keys the cache:
    credentials are left to the SDK's chain (environment, profile, instance role).
    """
    return pafs.S3FileSystem(
        endpoint_override=endpoint,
        region=None if endpoint else pafs.resolve_s3_region(bucket),
        connect_timeout=_CONNECT_TIMEOUT_S,
        request_timeout=_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=_ATTEMPTS),
    )


@functools.cache
def _from_uri(root: str) -> tuple[pafs.FileSystem, str]:
    """Any other filesystem pyarrow knows (gs://, hdfs://, ...), resolved once per scheme and bucket."""
    return pafs.FileSystem.from_uri(root)


def _explain(exc: BaseException, path: str) -> str:
    """One line saying what went wrong with ``path`` and how to fix it."""
    text = " ".join(str(exc).split())
    bucket = _SCHEME.match(path).group(2).split("/")[0] if is_uri(path) else ""
    if any(s in text for s in ("NO_SUCH_BUCKET", "NoSuchBucket", f"Bucket '{bucket}' not found")):
        return f"bucket {bucket} does not exist (create it, or pass another bucket)"
    if any(s in text for s in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "Forbidden")):
        return "access denied: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the instance profile"
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        where = s3_endpoint() or "the default AWS endpoint"
        detail = text.split("Details: ")[-1] if "Details: " in text else text.rsplit(": ", 1)[-1]
        return f"cannot reach {where} ({detail}): check AWS_ENDPOINT_URL and the network"
    if isinstance(exc, FileNotFoundError):
        missing = getattr(exc, "filename", None)  # set for a local file, not by pyarrow
        return f"{missing} does not exist: check the path" if missing else "does not exist: check the path"
    if "Unrecognized filesystem type" in text:
        return f"unsupported scheme ({text}): use a local path, s3:// or gs://"
    return text


@contextmanager
def errors(path: str, need: int | None = None) -> Iterator[None]:
    """Turn filesystem errors about ``path`` into one-line ``StorageError`` (``DiskFull`` when space ran out).

    ``need`` (bytes) goes into the disk-full message.
    """
    try:
        yield
    except StorageError:
        raise
    except (OSError, pyarrow.ArrowException) as exc:
        from mnist_ray.files import capacity  # capacity builds on this module: imported only once a write failed

        if capacity.is_disk_full(exc):
            raise capacity.disk_full(path, need) from None
        raise StorageError(f"{path}: {_explain(exc, path)}") from None


def _info(path: str) -> pafs.FileInfo:
    """The ``FileInfo`` of ``path`` (type NotFound when absent)."""
    fs, fs_path = filesystem(path)
    with errors(path):
        return fs.get_file_info(fs_path)


def exists(path: str) -> bool:
    """True if ``path`` is a file or a folder (on an object store: any object under the prefix)."""
    return _info(path).type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    """True if ``path`` is a file (an object, on an object store)."""
    return _info(path).type == pafs.FileType.File


def mtime(path: str) -> float | None:
    """Modification time of ``path`` as a Unix timestamp; None when absent or unknown (object-store folders)."""
    info = _info(path)
    return info.mtime.timestamp() if info.type != pafs.FileType.NotFound and info.mtime else None


def list_dirs(path: str) -> list[str]:
    """Names of the immediate child folders of ``path``, sorted; [] when ``path`` does not exist."""
    fs, fs_path = filesystem(path)
    with errors(path):
        infos = fs.get_file_info(pafs.FileSelector(fs_path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(path: str) -> bytes:
    """The whole content of the file ``path``."""
    fs, fs_path = filesystem(path)
    with errors(path), fs.open_input_stream(fs_path) as stream:
        return stream.read()


def read_text(path: str) -> str:
    """The file ``path`` decoded as UTF-8."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically: local temp file + rename; on an object store one upload."""
    path = normalize(path)
    with errors(path):
        if not is_uri(path):
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            return path
        fs, fs_path = filesystem(path)
        with fs.open_output_stream(fs_path) as stream:
            stream.write(data)
    return path


def write_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def upload_file(local: Path, dest: str) -> str:
    """Copy the local file ``local`` to ``dest`` (a path or URI) atomically."""
    dest = normalize(dest)
    if not is_uri(dest):
        with errors(dest), atomic_path(dest) as tmp:
            shutil.copyfile(local, tmp)
        return dest
    fs, fs_path = filesystem(dest)
    with errors(dest), open(local, "rb") as src, fs.open_output_stream(fs_path) as out:
        shutil.copyfileobj(src, out, _CHUNK)
    return dest


def download_file(src: str, local: Path) -> Path:
    """Copy the file ``src`` (a path or URI) to the local file ``local`` atomically."""
    fs, fs_path = filesystem(src)
    with errors(src), fs.open_input_stream(fs_path) as stream, atomic_path(local) as tmp, open(tmp, "wb") as out:
        shutil.copyfileobj(stream, out, _CHUNK)
    return Path(local)


@contextmanager
def local_copy(path: str) -> Iterator[Path]:
    """A real local file for ``path``: the path itself if local, else a download that is removed afterwards."""
    path = normalize(path)
    if not is_uri(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="mnist_ray-") as tmp:
        yield download_file(path, Path(tmp) / path.rsplit("/", 1)[-1])


def remove_file(path: str) -> None:
    """Delete the file ``path``; nothing when it is absent."""
    fs, fs_path = filesystem(path)
    with errors(path):
        if fs.get_file_info(fs_path).type == pafs.FileType.File:
            fs.delete_file(fs_path)
