"""Each new local Ray instance gives its own processes its GCS address, so none of them guesses "auto".

Ray's processes inherit the starting driver's environment. In Ray 2.60, Ray Train's placement-group cleaner asks
Ray's state API for actors with no address, which resolves "auto": with two Ray instances on one machine (two local
jobs, or a local job beside a ``ray start`` head) it fails, the placement groups of stopped trials are never freed,
and a sweep waits forever. A chosen GCS port named in ``RAY_ADDRESS`` removes the guess. The node's address comes
from Ray's private ``ray._private.services.get_node_ip_address``, as Ray's own start computes it.

If Ray moves that helper, ``tests/test_ray_boundary.py::test_private_ray_names_still_exist[own_address]`` fails; if
the cleaner guesses again although the address is given,
``tests/test_cluster_connect.py::test_a_local_instance_beside_another_gives_its_processes_their_own_address`` does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from mnist_ray.ray_workarounds.local_start import free_port


@contextlib.contextmanager
def own_address_for_ray_processes(local: bool) -> Iterator[None]:
    """While a new local instance (``local``) starts, put its own GCS address in ``RAY_ADDRESS``; restore it after.

    Does nothing where ``RAY_GCS_SERVER_PORT`` is already chosen by the caller.
    """
    if not local or "RAY_GCS_SERVER_PORT" in os.environ:
        yield
        return
    from ray._private.services import get_node_ip_address

    port = str(free_port(first=None))
    saved = {k: os.environ.get(k) for k in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS")}
    os.environ.update(RAY_GCS_SERVER_PORT=port, RAY_ADDRESS=f"{get_node_ip_address()}:{port}")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
