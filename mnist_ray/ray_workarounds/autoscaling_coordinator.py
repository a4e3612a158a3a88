"""Ray's ``AutoscalingCoordinator`` actor started by the driver right after ``ray.init``, not at the first fit.

In Ray 2.60, Ray Train's controller and Ray Data's executor both ask this detached actor for resources, and the
controller waits up to 5 s for its answer. Created by the controller, it is a new process (the controller's runtime
env is not the job's); created here, it can take a worker process Ray prestarted for the driver, and starts while
the job prepares its data. ``python -m bench.start_levers coordinator`` measures it. The actor is made by a private
function of Ray Data, ``ray.data._internal.cluster_autoscaler.get_or_create_autoscaling_coordinator``: if it moves,
only this head start is lost, never the job.

If it moves, ``tests/test_ray_boundary.py::test_private_ray_names_still_exist[autoscaling_coordinator]`` fails; if
it stops creating the actor, ``tests/test_cluster_connect.py::test_a_local_start_says_so_in_one_line`` does.
"""

from __future__ import annotations

import logging
import os

EARLY_COORDINATOR_ENV = "MNIST_RAY_EARLY_COORDINATOR"
"""Set to 0 to leave the AutoscalingCoordinator to Ray (bench/start_levers.py's "Ray's default" side)."""


def start_autoscaling_coordinator() -> None:
    """Start the ``AutoscalingCoordinator`` in the background now (unless ``EARLY_COORDINATOR_ENV`` is 0)."""
    if os.environ.get(EARLY_COORDINATOR_ENV, "1") == "0":
        return
    try:
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator

        get_or_create_autoscaling_coordinator()  # returns at once: the actor starts in the background
    except Exception as e:  # noqa: BLE001 - an optimisation; Ray creates the actor itself when it needs it
        logging.getLogger(__name__).debug("AutoscalingCoordinator not started early: %s", e)
