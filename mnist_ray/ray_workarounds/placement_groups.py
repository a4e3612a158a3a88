"""Placement groups Ray Train leaves behind when Tune stops a trial, found and removed by the job itself.

In Ray 2.60, Ray Train hands each worker group's placement group to a cleaner actor. When Tune stops a trial just as
the trial's controller creates a worker group, the cleaner can miss it, and the group holds its CPUs for as long as
the driver lives: on a small machine the next trials' groups stay pending and the sweep waits forever. During a
sweep :class:`PlacementGroupReaper` removes worker groups left unused; after it,
:func:`free_orphaned_placement_groups` removes every group of the job that no actor uses. Both need Ray's state API
(the dashboard); without it nothing is removed.

If Ray renames a field of the state API read here, ``tests/test_ray_boundary.py::test_state_api_fields_still_exist``
fails without starting Ray; if groups are no longer found or freed,
``tests/test_cluster_connect.py::test_placement_groups_no_actor_uses_are_freed_and_used_ones_kept`` and
``tests/test_cluster_connect.py::test_during_a_sweep_only_worker_groups_unused_past_the_grace_are_freed`` do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import ray


def free_orphaned_placement_groups(settle_s: float = 2.0, wait_s: float = 30.0) -> int:
    """Remove the placement groups this job created that no actor uses; returns how many.

    Call it only when no run of this job is active (after a sweep); during one, :class:`PlacementGroupReaper` does
    this for the worker groups alone. A group unused now and again after ``settle_s`` is an orphan. A worker group
    still used when the sweep returns (a stopped trial's workers shutting down) is watched for up to ``wait_s`` and
    removed once unused: left there, it would hold the CPU that the job's next run needs, and that run would wait
    forever.
    """
    freed, deadline = 0, time.monotonic() + wait_s
    try:
        while True:
            orphans = _unused_groups(worker_groups_only=False)
            if orphans:
                time.sleep(settle_s)
                orphans &= _unused_groups(worker_groups_only=False)
            for group in orphans:
                _remove_group(group)
            freed += len(orphans)
            if not _job_groups(worker_groups_only=True) or time.monotonic() >= deadline:
                return freed
            time.sleep(1.0)
    except Exception as e:  # the state API is optional here: a missing dashboard must not fail a finished sweep
        logging.getLogger(__name__).debug("placement groups not checked: %s", e)
        return freed


def _job_groups(worker_groups_only: bool) -> dict[str, object]:
    """Created placement groups of this job by id; ``worker_groups_only``: those reserving CPUs or GPUs."""
    from ray.util.state import list_placement_groups

    job = ray.get_runtime_context().get_job_id()
    groups = list_placement_groups(address=_state_address(), detail=True, limit=10_000, raise_on_missing_output=False)
    mine = [g for g in groups if g.creator_job_id == job and g.state == "CREATED"]
    if worker_groups_only:
        mine = [g for g in mine if any({"CPU", "GPU"} & set(b["unit_resources"]) for b in g.bundles or [])]
    return {g.placement_group_id: g for g in mine}


def _unused_groups(worker_groups_only: bool) -> set[str]:
    """Created placement groups of this job that no actor (alive, pending or restarting) uses.

    ``worker_groups_only`` keeps the groups that reserve CPUs or GPUs: Ray Train's worker groups. A sweep's own
    trial groups reserve memory only (``mnist_ray.training.sweep.make_tuner``), and Tune creates them ahead of
    their actors.
    """
    from ray.util.state import list_actors

    actors = list_actors(address=_state_address(), detail=True, limit=10_000, raise_on_missing_output=False)
    used = {a.placement_group_id for a in actors if a.placement_group_id and a.state != "DEAD"}
    return set(_job_groups(worker_groups_only)) - used


def _state_address() -> str:
    """This driver's own GCS address for Ray's state API.

    Given no address, the state API guesses "auto", which fails with two Ray instances on one machine (a sweep
    beside another local job, or the suite run as two pytest processes): the checks above would then free nothing.
    """
    return ray.get_runtime_context().gcs_address


def _remove_group(group_id: str) -> None:
    from ray.util.placement_group import PlacementGroup

    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))


class PlacementGroupReaper:
    """While a sweep runs: remove Ray Train worker groups that no actor has used for ``grace_s`` seconds.

    Such a group is what the cleaner race leaves when Tune stops a trial between its controller creating the worker
    group and starting the workers. Mid-sweep, two such groups hold both CPUs of a 2-core machine, the next trials'
    groups stay pending, and the sweep waits forever. A live worker group has actors within moments of being
    created, so ``grace_s`` unused means nobody will use it. Checks every ``every_s`` seconds on a daemon thread; a
    state API that does not answer is skipped quietly. ``on_free(n)`` hears of each removal.
    """

    def __init__(
        self, grace_s: float = 30.0, every_s: float = 10.0, on_free: Callable[[int], None] | None = None
    ) -> None:
        self.grace_s, self.every_s = grace_s, every_s
        self._on_free = on_free or (lambda n: None)
        self._unused_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="placement-group-reaper", daemon=True)

    def __enter__(self) -> PlacementGroupReaper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 5)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check(time.monotonic())
            except Exception as e:  # never let the reaper take a sweep down
                logging.getLogger(__name__).debug("placement groups not checked: %s", e)

    def check(self, now: float) -> int:
        """One pass: note newly unused worker groups, remove those unused for ``grace_s``; returns how many."""
        unused = _unused_groups(worker_groups_only=True)
        self._unused_since = {g: self._unused_since.get(g, now) for g in unused}
        due = [g for g, since in self._unused_since.items() if now - since >= self.grace_s]
        for group in due:
            _remove_group(group)
            del self._unused_since[group]
        if due:
            self._on_free(len(due))
        return len(due)
