"""One new local Ray instance starting at a time on this machine, so that each gets a dashboard port.

``ray.init`` (Ray 2.60) takes the dashboard port it is given and binds it a few seconds later, in the dashboard's
own process. A port picked free beforehand can be taken in between: two local instances starting at once (two
jobs, or the suite's two pytest processes) both found 8265 free, and the second one's start failed on it. Under a
machine-wide lock the second start sees 8265 taken and picks another free port.

If the lock stops sufficing, ``tests/test_cluster_connect.py::test_two_local_starts_at_once_both_get_a_dashboard``
fails.

A port the OS hands out as free can also be one Ray 2.60 reserves for itself by default: its dashboard agent
listens on 52365 unless told otherwise, and ``ray.init`` refuses a start whose GCS port is also 52365 ("Ray
component dashboard_agent_http is trying to use a port number 52365 that is used by other components"). It happened
once in CI: a start's odds are one in the OS's ephemeral range (28,232 ports by Linux's default). :func:`free_port`
never returns one of Ray's default ports (read from Ray's private ``ray._private.ray_constants``) nor a port it
already handed out during the same start, such as the GCS port chosen just before the dashboard's. If Ray renames
those constants, ``tests/test_ray_boundary.py::test_private_ray_names_still_exist[local_start]`` fails, and
``tests/test_cluster_connect.py::test_free_ports_pass_over_rays_own_and_those_already_taken`` checks the rule.
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
        _handed_out.clear()  # a new start: the ports an earlier one of this process took are its own business
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


TRIES = 100
"""How many ports the OS may offer before :func:`free_port` gives up on finding one Ray will accept."""

_handed_out: set[int] = set()
"""Ports :func:`free_port` returned during the current start: its GCS and dashboard ports must differ."""


def ray_default_ports() -> frozenset[int]:
    """The ports Ray 2.60 takes by default for its own components (GCS, dashboard, dashboard agent)."""
    from ray._private import ray_constants

    return frozenset(
        (
            ray_constants.DEFAULT_PORT,
            ray_constants.DEFAULT_DASHBOARD_PORT,
            ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT,
        )
    )


def free_port(first: int | None, avoid: frozenset[int] | None = None) -> int:
    """A TCP port that is free right now: ``first`` when available (8265 for the dashboard), else one the OS offers.

    An offered port in ``avoid`` (Ray's default ports unless given), or already handed out here, is passed over.
    """
    avoid = (ray_default_ports() if avoid is None else avoid) | _handed_out
    candidates = ([first] if first and first not in _handed_out else []) + [0] * TRIES
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            got = s.getsockname()[1]
        if port or got not in avoid:
            _handed_out.add(got)
            return got
    raise OSError(f"no free TCP port outside Ray's own after {TRIES} tries")
