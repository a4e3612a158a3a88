"""Whether a job can write where it is told: a write probe, free space, and the error for a full disk or quota.

Jobs call :func:`check_writable` and :func:`check_space` before any work starts. A disk or quota that runs out
later is one :class:`DiskFull` line (the free space and about what is needed; exit 1) wherever the write failed:
a storage call (:func:`mnist_ray.files.storage.errors`), a Ray worker, a folder being published.
"""

from __future__ import annotations

import errno
import shutil
import tempfile
import uuid
from pathlib import Path

from mnist_ray.files import storage


class DiskFull(storage.StorageError):
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
    if storage.is_uri(path):
        return None
    folder = Path(storage.normalize(path))
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


def check_writable(path: str, flag: str) -> str:
    """Prove ``path`` writable before any work starts; a failure is one line naming ``flag``, the path and the fix."""
    # Creates the folder (locally mkdir -p; on S3 deleting the probe leaves an empty prefix marker, much the same).
    try:
        path = storage.normalize(path)
        if not storage.is_uri(path):
            return _check_local_writable(Path(path), flag)
        fs, fs_path = storage.filesystem(path)
        probe = f"{fs_path}/.write-test-{uuid.uuid4().hex}"
        with storage.errors(path):
            with fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            fs.delete_file(probe)
    except storage.StorageError as exc:
        raise storage.StorageError(f"{flag} {exc}") from None
    return path


def _check_local_writable(path: Path, flag: str) -> str:
    """Create the local folder ``path`` and write a test file in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test"):
            pass
    except OSError as exc:
        raise storage.StorageError(f"{path}: cannot write ({exc.strerror}): pass a writable {flag}") from None
    return str(path)
