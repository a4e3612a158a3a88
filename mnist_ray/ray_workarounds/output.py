"""What of Ray's own output a job shows: everything with ``--verbose``, by default only what a user acts on.

Two of Ray's messages cannot be turned off at their source and say nothing a user can act on:
- Ray's error listener prints the raylet's multi-line dump when a worker process dies; the job prints its own
  one line (lost worker, the epoch it restarts from, restart k of ``--max-failures``) instead.
- Ray's C++ core worker logs an error line whenever an actor with constructor arguments in the object store
  may restart: Ray Data always passes its map function to an actor pool's actors that way, so every evaluation
  scored by actors (on GPUs; on CPUs it scores in tasks) logs it (https://github.com/ray-project/ray/issues/53727).
  The line still reaches the driver's log file in Ray's session folder; only its copy on stderr is dropped.

Both as of Ray 2.60. The first replaces ``print_to_stdstream`` of the private ``ray._private.worker``, which Ray's
error listener calls with each message. If Ray moves it,
``tests/test_ray_boundary.py::test_private_ray_names_still_exist[output]`` fails at once; if the dumps reach the
output again, ``tests/test_faults.py::test_lost_worker_restarts_from_last_checkpoint_and_says_so_in_one_line`` does;
a ``core_worker.cc`` line in an evaluation's output fails
``tests/test_cluster_jobs.py::test_train_then_evaluate_through_the_job_server``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)
_quiet = False
RAY_DATA_ACTOR_ARGS = re.compile(rb"core_worker\.cc:\d+: Actor with class name: '[^']*MapWorker")


def quiet() -> None:
    """Keep Ray's raylet error dumps out of the default output; they go to this module's logger at DEBUG."""
    global _quiet
    import ray._private.worker as ray_worker

    if _quiet:
        return
    _quiet = True
    shown = ray_worker.print_to_stdstream

    def filtered(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":  # only the error listener sends these
            for line in data.get("lines", []):
                logger.debug("ray: %s", line)
            return
        shown(data, ignore_prefix)

    ray_worker.print_to_stdstream = filtered


def is_quiet() -> bool:
    """Whether a job connected without ``--verbose``."""
    return _quiet


@contextlib.contextmanager
def dropping_native_lines(pattern: re.Pattern[bytes] = RAY_DATA_ACTOR_ARGS) -> Iterator[None]:
    """While inside, lines this process's native code writes to stderr (fd 2) that match ``pattern`` are dropped.

    Fd 2 passes through a pipe and a thread that forwards every other line (Python's ``sys.stderr`` included) in
    order. Does nothing with ``--verbose``, or when stderr has no file descriptor.
    """
    try:
        if not _quiet:
            raise OSError
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    pump = threading.Thread(target=_forward, args=(read_end, saved, pattern), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump reads to its end and stops
        pump.join(timeout=5)
        os.close(saved)


def _forward(read_end: int, target: int, pattern: re.Pattern[bytes]) -> None:
    with os.fdopen(read_end, "rb") as lines:
        for line in lines:
            if not pattern.search(line):
                os.write(target, line)
