"""Every job's inputs and outputs: local paths and object-store URIs (``s3://``, ``gs://``) through ``pyarrow.fs``.

Local paths keep their atomic semantics (temp file + rename; folders assembled beside and renamed). On an object
store one upload is atomic by nature, and a folder counts as complete only once its ``MANIFEST.json`` exists:
``publish_dir`` writes it last and readers check ``is_complete``. S3 endpoint, region and credentials come from
the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, keys, profiles).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pyarrow
import pyarrow.fs as pafs

from mnist_ray.errors import MnistRayError
from mnist_ray.files.atomic import atomic_dir, atomic_path, swap_in

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
"""Written last into a published folder: its presence (with matching sizes) means the folder is complete."""

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


class DiskFull(StorageError):
    """No space or quota left where the job writes. Exit 1, not 2: the input was fine, and a retry cannot help."""

    exit_code = 1


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = (
    "No space left on device",
    "Disk quota exceeded",
    "QuotaExceeded",  # S3-compatible stores' refusals
    "XMinioStorageFull",
    "InsufficientStorage",
    "NotEnoughSpace",
)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, ``shutil.Error``, Arrow error, or one wrapping those) says space ran out."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
            return any(any(t in str(why) for t in _FULL_TEXTS) for *_, why in exc.args[0])
        if any(t in str(exc) for t in _FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: str) -> int | None:
    """Free space on the filesystem that holds the local ``path`` (its nearest existing folder); None for URIs."""
    if is_uri(path):
        return None
    folder = Path(normalize(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def size_text(n: float | None) -> str:
    """A byte count for people: 1.2 MB, 600 KB."""
    if n is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def disk_full(path: str, need: int | None = None, fix: str = "free some space or write elsewhere") -> DiskFull:
    """The one-line error for a full disk or quota at ``path``: its free space and about what is needed."""
    free = free_bytes(path)
    where = f"{size_text(free)} free" if free is not None else "the store refused the write"
    needs = f", needs about {size_text(need)}" if need else ""
    return DiskFull(f"{path}: no space left ({where}{needs}): {fix}")


def check_space(path: str, need: int, flag: str) -> None:
    """Before any work: fail with :class:`DiskFull` when the local ``path`` has less than ``need`` bytes free."""
    free = free_bytes(path)
    if free is not None and free < need:
        raise disk_full(path, need, f"free some space or pass another {flag}")


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
            return _s3(bucket, *_aws_env()), f"{bucket}/{key}".rstrip("/")
        fs, root = _from_uri(f"{scheme}://{bucket}")
    except (OSError, pyarrow.ArrowException, ValueError) as exc:
        raise StorageError(f"{path}: {_explain(exc, path)}") from None
    return fs, f"{root.rstrip('/')}/{key}" if key else root


def _aws_env() -> tuple[str | None, str | None]:
    """The S3 endpoint (``AWS_ENDPOINT_URL_S3`` first, as the SDKs do) and the access key id from the environment."""
    env = os.environ.get
    return env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"), env("AWS_ACCESS_KEY_ID")


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
        where = _aws_env()[0] or "the default AWS endpoint"
        detail = text.split("Details: ")[-1] if "Details: " in text else text.rsplit(": ", 1)[-1]
        return f"cannot reach {where} ({detail}): check AWS_ENDPOINT_URL and the network"
    if isinstance(exc, FileNotFoundError):
        missing = getattr(exc, "filename", None)  # set for a local file, not by pyarrow
        return f"{missing} does not exist: check the path" if missing else "does not exist: check the path"
    if "Unrecognized filesystem type" in text:
        return f"unsupported scheme ({text}): use a local path, s3:// or gs://"
    return text


@contextmanager
def _errors(path: str, need: int | None = None) -> Iterator[None]:
    """Turn filesystem errors about ``path`` into one-line ``StorageError`` (``DiskFull`` when space ran out)."""
    try:
        yield
    except StorageError:
        raise
    except (OSError, pyarrow.ArrowException) as exc:
        if is_disk_full(exc):
            raise disk_full(path, need) from None
        raise StorageError(f"{path}: {_explain(exc, path)}") from None


def _info(path: str) -> pafs.FileInfo:
    """The ``FileInfo`` of ``path`` (type NotFound when absent)."""
    fs, fs_path = filesystem(path)
    with _errors(path):
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
    with _errors(path):
        infos = fs.get_file_info(pafs.FileSelector(fs_path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def read_bytes(path: str) -> bytes:
    """The whole content of the file ``path``."""
    fs, fs_path = filesystem(path)
    with _errors(path), fs.open_input_stream(fs_path) as stream:
        return stream.read()


def read_text(path: str) -> str:
    """The file ``path`` decoded as UTF-8."""
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically: local temp file + rename; on an object store one upload."""
    path = normalize(path)
    with _errors(path):
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
        with _errors(dest), atomic_path(dest) as tmp:
            shutil.copyfile(local, tmp)
        return dest
    fs, fs_path = filesystem(dest)
    with _errors(dest), open(local, "rb") as src, fs.open_output_stream(fs_path) as out:
        shutil.copyfileobj(src, out, _CHUNK)
    return dest


def download_file(src: str, local: Path) -> Path:
    """Copy the file ``src`` (a path or URI) to the local file ``local`` atomically."""
    fs, fs_path = filesystem(src)
    with _errors(src), fs.open_input_stream(fs_path) as stream, atomic_path(local) as tmp, open(tmp, "wb") as out:
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


def _tree(local_dir: Path) -> dict[str, int]:
    """Every file under ``local_dir`` as {relative posix path: size}."""
    return {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in sorted(local_dir.rglob("*")) if p.is_file()}


def _manifest(files: dict[str, int]) -> str:
    """The manifest text for ``files``."""
    return json.dumps({"files": files, "written_at": datetime.now(timezone.utc).isoformat()}, indent=2) + "\n"


def publish_dir(local_dir: Path, dest: str, overwrite: bool = False) -> str:
    """Make the folder ``dest`` hold exactly the files of ``local_dir``, visible as complete only when it is."""
    dest, local_dir = normalize(dest), Path(local_dir)
    files = _tree(local_dir)
    if MANIFEST in files:
        raise StorageError(f"{local_dir}: contains {MANIFEST}, a name reserved for the published manifest")
    if not overwrite and (is_complete(dest) or (not is_uri(dest) and Path(dest).exists())):
        raise StorageError(f"{dest} exists: pass --overwrite or another --run-id")
    if not is_uri(dest):
        with _errors(dest, sum(files.values())), atomic_dir(dest, overwrite=overwrite) as tmp:  # old or new
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
            os.chmod(tmp, 0o755)  # copytree copied the 0700 of a TemporaryDirectory; reports are meant to be shared
            (tmp / MANIFEST).write_text(_manifest(files))
        return dest
    remove_dir(dest)  # an overwritten or half-written folder: its manifest goes first
    with _errors(dest, sum(files.values())):
        for rel in files:
            upload_file(local_dir / rel, join(dest, rel))
        write_text(join(dest, MANIFEST), _manifest(files))
    return dest


def publish_staged(staging: str, dest: str, overwrite: bool = False) -> str:
    """Publish the folder a Ray Data write filled at ``staging`` (beside ``dest``) as ``dest``, complete or absent.

    Locally the staging folder gets its manifest and is renamed into place. On an object store its files are
    copied in the store (no download) and the manifest is written last. The staging folder is gone afterwards.
    """
    dest = normalize(dest)
    fs, root = filesystem(staging)
    with _errors(staging):
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = {i.path[len(root) :].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}
    if not overwrite and (is_complete(dest) or (not is_uri(dest) and Path(dest).exists())):
        raise StorageError(f"{dest} exists: pass --overwrite or another --output")
    if not is_uri(dest):
        with _errors(dest):
            (Path(staging) / MANIFEST).write_text(_manifest(files))
            os.chmod(staging, 0o755)
            swap_in(Path(staging), Path(dest), overwrite)
        return dest
    remove_dir(dest)  # an overwritten or half-written folder: its manifest goes first
    _, dest_root = filesystem(dest)
    with _errors(dest, sum(files.values())):
        for rel in files:
            fs.copy_file(f"{root}/{rel}", f"{dest_root}/{rel}")
        write_text(join(dest, MANIFEST), _manifest(files))
    remove_dir(staging)
    return dest


def remove_dir(path: str) -> None:
    """Delete the folder ``path`` and everything under it, its manifest first so readers stop trusting it."""
    fs, fs_path = filesystem(path)
    with _errors(path):
        if fs.get_file_info(fs_path).type != pafs.FileType.Directory:
            return
        if fs.get_file_info(f"{fs_path}/{MANIFEST}").type == pafs.FileType.File:
            fs.delete_file(f"{fs_path}/{MANIFEST}")
        fs.delete_dir_contents(fs_path, missing_dir_ok=True)
        if not is_uri(path) or "/" in fs_path:
            fs.delete_dir(fs_path)  # but never a bucket


def remove_file(path: str) -> None:
    """Delete the file ``path``; nothing when it is absent."""
    fs, fs_path = filesystem(path)
    with _errors(path):
        if fs.get_file_info(fs_path).type == pafs.FileType.File:
            fs.delete_file(fs_path)


def is_complete(dest: str) -> bool:
    """True if ``dest`` has a manifest and every file it lists is present with its size."""
    fs, fs_path = filesystem(dest)
    try:
        listed = json.loads(read_text(join(normalize(dest), MANIFEST)))["files"]
    except (StorageError, ValueError, KeyError, TypeError):
        return False
    with _errors(dest):
        infos = fs.get_file_info(pafs.FileSelector(fs_path, recursive=True, allow_not_found=True))
    sizes = {i.path[len(fs_path) :].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}
    return all(sizes.get(rel) == size for rel, size in listed.items())


def check_new_folder(path: str, overwrite: bool) -> str:
    """``path`` normalised, for a job's output folder: an existing one is refused unless ``overwrite``."""
    target = normalize(path)
    if not overwrite and exists(target):
        raise StorageError(f"output {target} already exists: pass --overwrite or another --output")
    return target


def parent(path: str) -> str:
    """The folder that receives ``path`` (a local publish assembles its temporary copy there)."""
    if not is_uri(path):
        return str(Path(path).parent)
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else path


def check_writable(path: str, flag: str) -> str:
    """Prove ``path`` writable before any work starts; a failure is one line naming ``flag``, the path and the fix."""
    # Creates the folder (locally mkdir -p; on S3 deleting the probe leaves an empty prefix marker, much the same).
    try:
        path = normalize(path)
        if not is_uri(path):
            return _check_local_writable(Path(path), flag)
        fs, fs_path = filesystem(path)
        probe = f"{fs_path}/.write-test-{uuid.uuid4().hex}"
        with _errors(path):
            with fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            fs.delete_file(probe)
    except StorageError as exc:
        raise StorageError(f"{flag} {exc}") from None
    return path


def _check_local_writable(path: Path, flag: str) -> str:
    """Create the local folder ``path`` and write a test file in it (what ``cli.ensure_writable`` does)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test"):
            pass
    except OSError as exc:
        raise StorageError(f"{path}: cannot write ({exc.strerror}): pass a writable {flag}") from None
    return str(path)
