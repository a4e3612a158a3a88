"""A new local Ray instance's node on 127.0.0.1, so no port of a one-machine run is reachable from the network.

By default Ray 2.60 on Linux advertises, and binds its GCS, raylet, workers and dashboard agent to, this machine's
interface address. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's switch for a loopback node, named in the private
``ray._private.ray_constants``: the environment variable reaches the processes Ray starts, but Ray read it into
``ENABLE_RAY_CLUSTER`` when it was imported, so the driver's copy is set too. Torch's rendezvous follows the node
address (:mod:`mnist_ray.ray_workarounds.rendezvous`). To serve other machines, start a head with ``ray start``.

If Ray renames the switch, ``tests/test_ray_boundary.py::test_private_ray_names_still_exist[loopback_node]`` fails;
if it stops honouring it, ``tests/test_cluster_connect.py::test_a_local_start_says_so_in_one_line`` (a node off
127.0.0.1) and ``tests/test_faults.py::test_killed_train_driver_resumes_with_the_same_command`` (a port off loopback).
"""

from __future__ import annotations

import os


def loopback_only() -> None:
    """Make the local instance this process is about to start put its node on 127.0.0.1."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
