"""A training run's progress on the driver: each epoch's report, each lost worker group, and a stop, as they happen.

Ray Train's ``fit()`` blocks until the run ends, and its reports reach a ``UserCallback`` in the Train controller, not
the driver. :func:`fit_with_progress` runs the fit in a thread and forwards what the callback sees through a Ray
queue, so the driver prints each epoch, logs a lost worker group as one line, hands each report to Tune in step,
and can end the run at once on a stop signal or a full disk.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import ray
from ray.train import UserCallback
from ray.train.torch import TorchTrainer

from mnist_ray.files import capacity

log = logging.getLogger(__name__)


class _QueueCallback(UserCallback):
    """Forwards rank 0's metrics, and one line per lost worker group, from the Train controller to the driver."""

    def __init__(self, queue, max_failures: int, acks=None) -> None:
        self.queue, self.max_failures, self.epoch, self.failures = queue, max_failures, 0, 0
        self.acks = acks

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if not self.epoch:  # the first report: the driver learns this controller, to end the run on a stop
            self.queue.put_nowait({"controller": _current_actor()})
        self.epoch = metrics[0].get("epoch", self.epoch)
        path = {"checkpoint_path": checkpoint.path} if checkpoint else {}  # what a sweep's trial results carry
        self.queue.put_nowait({**metrics[0], **path})
        if self.acks is not None:  # hold the run until the driver has handled this report (see fit_with_progress)
            self.acks.get(block=True)

    def after_exception(self, run_context, worker_exceptions) -> None:
        full = next((e for e in worker_exceptions.values() if capacity.is_disk_full(e)), None)
        if full is not None:  # restarting cannot make space: the driver ends the run (kills this controller)
            detail = " ".join(str(full).split())[-300:]
            self.queue.put_nowait({"disk_full": detail, "controller": _current_actor()})
            return
        self.failures += 1
        ranks = ", ".join(str(r) for r in sorted(worker_exceptions))
        first = next(iter(worker_exceptions.values()), None)
        reason = f"{type(first).__name__}: {str(first).splitlines()[0][:120]}" if first else "no error detail"
        then = f"restarting from the epoch {self.epoch} checkpoint" if self.epoch else "restarting from the start"
        if self.failures > self.max_failures:
            then = f"giving up: --max-failures {self.max_failures} restarts used"
        else:
            then += f" (restart {self.failures} of --max-failures {self.max_failures})"
        self.queue.put_nowait({"event": f"lost worker rank {ranks} ({reason}); {then}"})


def _current_actor():
    """This actor's handle (the Train controller's, in a callback), or None outside an actor."""
    try:
        return ray.get_runtime_context().current_actor
    except Exception:  # noqa: BLE001 - not in an actor
        return None


@contextlib.contextmanager
def _ends_run_on_stop(box: dict):
    """On Ctrl-C or a stop signal, kill the run's Train controller (and so its workers) before the driver goes on:
    no epoch is trained, and no checkpoint written, after the job has said which epoch it resumes from. The same
    when Tune ends a trial from inside its report (``SystemExit``, e.g. stopped by ASHA): its CPUs are freed now."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if box.get("controller") is not None:
            with contextlib.suppress(Exception):
                ray.kill(box["controller"], no_restart=True)
        raise


def _handle_report(metrics: dict, on_epoch: Callable[[dict], None], box: dict) -> None:
    """Call ``on_epoch``, keeping its first error for after the fit (later reports are then skipped)."""
    if "callback_error" in box:
        return
    try:
        on_epoch(metrics)
    except Exception as exc:  # noqa: BLE001 - kept until fit ends, then raised
        box["callback_error"] = exc


def fit_with_progress(
    trainer_factory: Callable[[list[UserCallback]], TorchTrainer],
    on_epoch: Callable[[dict], None],
    max_failures: int,
    in_step: bool = False,
):
    """Run ``trainer.fit()`` in a thread while calling ``on_epoch`` on the driver for each report.

    The queue actors are always killed and the thread always joined; an error raised by ``on_epoch``
    does not abandon a running fit: it is raised once the fit has ended. A lost worker group is
    logged as one line (which rank, from which epoch it restarts, restart k of ``max_failures``).
    ``in_step``: the run waits at each report until ``on_epoch`` has returned (a Tune trial: Tune decides on an
    epoch before the next one is trained, so ASHA's stop never finds that epoch's checkpoint already replaced).
    """
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    acks = Queue(actor_options={"num_cpus": 0}) if in_step else None
    box: dict[str, Any] = {}
    try:
        trainer = trainer_factory([_QueueCallback(queue, max_failures, acks)])

        def run() -> None:
            try:
                box["result"] = trainer.fit()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the driver thread below
                box["error"] = exc

        thread = threading.Thread(target=run, name="mnist-ray-fit", daemon=True)
        thread.start()
        while thread.is_alive() or not queue.empty():
            with contextlib.suppress(Empty), _ends_run_on_stop(box):
                metrics = queue.get(timeout=0.5)
                if "controller" in metrics and len(metrics) == 1:
                    box["controller"] = metrics["controller"]
                elif "disk_full" in metrics:
                    box.setdefault("disk_full", metrics["disk_full"])
                    if metrics["controller"] is not None:  # no worker-group restart: fail at once
                        ray.kill(metrics["controller"], no_restart=True)
                elif "event" in metrics:
                    log.warning(metrics["event"])
                else:
                    _handle_report(metrics, on_epoch, box)
                    if acks is not None:  # the run waits for this, handled or not
                        acks.put_nowait(True)
        thread.join()
    finally:
        ray.kill(queue.actor)
        if acks is not None:
            ray.kill(acks.actor)
    if "disk_full" in box:
        raise capacity.DiskFull(box["disk_full"])
    if "error" in box:
        raise box["error"]
    if "callback_error" in box:
        raise box["callback_error"]
    return box["result"]
