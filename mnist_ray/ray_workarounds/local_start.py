"""One new local Ray instance starting at a time on this machine, so that each gets a dashboard port.

``ray.init`` (Ray 2.60) takes the dashboard port it is given and binds it a few seconds later, in the dashboard's
own process. A port picked free beforehand can be taken in between: two local instances starting at once (two
jobs, or the suite's two pytest processes) both found 8265 free, and the second one's start failed on it. Under a
machine-wide lock the second start sees 8265 taken and picks another free port.

If the lock stops sufficing, ``tests/test_cluster_connect.py::test_two_local_starts_at_once_both_get_a_dashboard``
fails.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "mnist_ray_local_start.lock"
"""In the temp folder: shared by every job and test process on this machine."""


@contextlib.contextmanager
def one_local_start_at_a_time(local: bool) -> Iterator[None]:
    """Hold a machine-wide lock while a new local instance (``local``) picks its ports and starts."""
    if not local:
        yield
        return
    import fcntl  # POSIX only: imported here, where a local start on Linux or macOS needs it

    with open(Path(tempfile.gettempdir()) / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def free_port(first: int | None) -> int:
    """A TCP port that is free right now: ``first`` when available (8265 for the dashboard), else any."""
    for port in (first, 0) if first else (0,):
        with socket.socket() as s:
            try:
                s.bind(("", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise OSError("no free TCP port")
