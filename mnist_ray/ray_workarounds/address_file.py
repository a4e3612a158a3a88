"""Where ``ray start`` records its head's address on this machine: Ray's own rule, not a copy of it.

Ray 2.60 keeps the rule ($RAY_TMPDIR, else $TMPDIR, else /tmp; then ``ray/ray_current_cluster``) in a private
helper, ``ray._common.utils.get_ray_address_file``; ``ray.init(address="auto")`` reads the same file. Using that
helper keeps a job's resolution and the message naming a stale file in step with Ray's.

If Ray moves or renames it, ``tests/test_ray_boundary.py::test_private_ray_names_still_exist[address_file]`` fails;
if the rule itself changes, ``tests/test_cluster_connect.py::test_resolve_follows_rays_rule`` does.
"""

from __future__ import annotations

from pathlib import Path

from ray._common.utils import get_ray_address_file


def path() -> Path:
    """The file in which ``ray start`` records its head's address on this machine."""
    return Path(get_ray_address_file(None))
