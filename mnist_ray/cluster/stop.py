"""Stop signals: SIGTERM and SIGHUP end a job the way Ctrl-C does, with one line and exit code 128 + signal.

Schedulers stop a job with SIGTERM (``ray job stop``, ``timeout``, systemd, Kubernetes) and a closed terminal sends
SIGHUP. Each becomes :class:`Stopped`, a ``KeyboardInterrupt``: every ``finally`` runs, MLflow marks the run KILLED
(:func:`mnist_ray.reports.tracking.ended`), nothing half-written is published (writes are temp + rename, or a manifest
last), and :func:`mnist_ray.settings.cli.run` prints one line saying what happens next.

Ray installs its own handlers in the driver, and they would win otherwise: ``ray.init`` sets a Python SIGTERM
handler (``sys.exit(15)``), a local head's node sets another (kill its processes, exit 1), and the core worker's
C++ failure handler prints a stack dump and aborts (exit 134). :func:`install` runs before ``ray.init`` and again
right after it (:func:`mnist_ray.cluster.connection.connect`); Python's ``signal.signal`` replaces a C-level
handler too.
``tests/test_stop.py`` fails if a Ray upgrade installs a handler later than that.

A sweep stops gracefully: while :func:`graceful` holds a hook (Tune's own interrupt), the first signal calls it
and the job raises :class:`Stopped` once the hook's work is done (:func:`check`); a second signal raises at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import typing
from collections.abc import Callable, Iterator

from mnist_ray.ray_workarounds import loggers

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Handled like Ctrl-C. SIGINT is Ctrl-C itself: handled here so that it also ends a sweep gracefully."""

_received: list[int] = []
"""The signals received so far, first first."""
_hooks: list[Callable[[int], None]] = []
_installed = False


class Stopped(KeyboardInterrupt):
    """The job was asked to stop by signal ``signum``; ``exit_code`` is what a shell reports (128 + signum)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        """SIGTERM, SIGHUP or SIGINT."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handle(signum: int, frame) -> None:
    """The first signal goes to the innermost graceful hook, if any; otherwise (or a second time) raise."""
    first = not _received
    _received.append(signum)
    # Calls into Ray cut short by the stop leave results nobody reads; Ray would log each as an "Unhandled error".
    loggers.quiet_unhandled_errors()
    if first and _hooks:
        _hooks[-1](signum)
        return
    raise Stopped(_received[0])


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP in this process (the main thread only; elsewhere this does nothing)."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        signal.signal(sig, _handle)
    _installed = True


def reinstall() -> None:
    """After ``ray.init``: take the signals back from Ray's handlers, if :func:`install` ran in this process."""
    if _installed:
        install()


def installed() -> bool:
    """Whether this process handles stop signals here (a job's process, not a test calling ``main``)."""
    return _installed


def received() -> int | None:
    """The first stop signal received, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise :class:`Stopped` if a stop signal arrived while a graceful hook handled it."""
    if _received:
        raise Stopped(_received[0])


@contextlib.contextmanager
def graceful(hook: Callable[[int], None]) -> Iterator[None]:
    """Inside, the first stop signal calls ``hook(signum)`` instead of raising; :func:`check` raises afterwards."""
    _hooks.append(hook)
    try:
        yield
    finally:
        _hooks.remove(hook)


@contextlib.contextmanager
def next_step(what: Callable[[], str] | str) -> Iterator[None]:
    """Inside, :func:`explain` says ``what`` (or calls it): what the user does after a stop, e.g. rerun to resume."""
    try:
        yield
    except BaseException as exc:
        # Any error once a stop signal arrived is its consequence (Ray's processes get the same SIGTERM from
        # systemd or `timeout`, and the driver's calls into Ray fail): it is reported as the stop.
        if (isinstance(exc, KeyboardInterrupt) or _received) and not hasattr(exc, "next_step"):
            exc.next_step = _say(what)  # the innermost block says it, while its state is at hand
        raise


def _say(what: Callable[[], str] | str) -> str:
    try:
        return what() if callable(what) else what
    except Exception:  # noqa: BLE001 - e.g. storage unreachable while stopping: a plainer line, not a traceback
        return "re-run the same command"


def explain(exc: BaseException) -> str:
    """What happens after the stop ``exc``: what the innermost :func:`next_step` around it said."""
    return getattr(exc, "next_step", "re-run the same command")


def exit_within(seconds: float, code: int) -> typing.NoReturn:
    """Exit with ``code``: disconnect from Ray (stopping a local instance), but never take longer than ``seconds``.

    Python's own exit would wait for Ray's shutdown with training still running in a background thread; a job
    server SIGKILLs a driver that is not gone within its stop grace (``RAY_JOB_STOP_WAIT_TIME_S``, 3 s).
    A local instance's processes also die with the driver (Ray starts them with a parent-death signal).
    """
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    done = threading.Event()

    def shutdown() -> None:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        done.set()

    threading.Thread(target=shutdown, name="mnist-ray-stop", daemon=True).start()
    done.wait(seconds)
    logging.shutdown()
    os._exit(code)
