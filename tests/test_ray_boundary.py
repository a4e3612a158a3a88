"""Ray's private APIs are used in ``mnist_ray/ray_workarounds/`` only, and what they use there still exists.

None of these tests starts Ray: each fails at once when a Ray upgrade moves a private name that a workaround relies
on, before a long run shows the behaviour it worked around coming back.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

SCANNED = ("mnist_ray", "jobs")
ALLOWED = REPO / "mnist_ray" / "ray_workarounds"
PRIVATE_NAME = re.compile(r"(?<![\w.])ray(?:\.\w+)*\._\w+(?:\.\w+)*")
"""``ray._private``, ``ray.data._internal``, ``ray._common``...: in code, strings (logger names) and comments."""


def _private_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``from ray... import _name`` (the module itself may be public), however the import is wrapped."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ray":
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if a.name.startswith("_")]
    return found


def private_ray_names(file: Path, root: Path = REPO) -> list[str]:
    """``file:line: name`` for each private Ray name in ``file`` (named relative to ``root``)."""
    text = file.read_text()
    where = file.relative_to(root)
    found = [(n, m.group()) for n, line in enumerate(text.splitlines(), 1) for m in PRIVATE_NAME.finditer(line)]
    found += _private_imports(ast.parse(text, str(file)))
    return [f"{where}:{n}: {name}" for n, name in sorted(set(found))]


def test_private_ray_names_appear_in_ray_workarounds_only():
    files = [f for top in SCANNED for f in sorted((REPO / top).rglob("*.py")) if ALLOWED not in f.parents]
    assert files, "nothing scanned"
    outside = [hit for f in files for hit in private_ray_names(f)]
    assert not outside, "private Ray names outside mnist_ray/ray_workarounds/ (move them there):\n" + "\n".join(outside)


def test_the_scan_finds_each_kind_of_private_name(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import ray._private.worker as w\n"
        'logging.getLogger("ray.data._internal.progress")\n'
        "from ray.train.torch.config import (\n    TorchConfig,\n    _TorchBackend,\n)\n"
        "import mnist_ray._x, xray._y, ray.data.read_parquet  # not Ray's, or public\n"
    )
    assert private_ray_names(sample, root=tmp_path) == [
        "sample.py:1: ray._private.worker",
        "sample.py:2: ray.data._internal.progress",
        "sample.py:3: ray.train.torch.config._TorchBackend",
    ]


def _parameters(obj) -> list[str]:
    return list(inspect.signature(obj).parameters)


def _logger_of(module: str) -> str:
    return importlib.import_module(module).logger.name


def _address_file():
    from ray._common.utils import get_ray_address_file

    assert _parameters(get_ray_address_file) == ["temp_dir"]


def _loopback_node():
    from ray._private import ray_constants

    # conftest.py and head.py set the variable by this name for Ray processes they start.
    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)


def _local_start():
    from mnist_ray.ray_workarounds.local_start import ray_default_ports

    assert {6379, 8265, 52365} == ray_default_ports()  # Ray's defaults for its GCS, dashboard and dashboard agent


def _own_address():
    from ray._private.services import get_node_ip_address

    assert _parameters(get_node_ip_address) == ["address"]


def _rendezvous():
    from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

    assert _parameters(_TorchBackend.on_start) == ["self", "worker_group", "backend_config"]
    assert _parameters(_set_torch_distributed_env_vars) == []


def _output():
    import ray._private.worker as ray_worker

    assert _parameters(ray_worker.print_to_stdstream) == ["data", "ignore_prefix"]


def _autoscaling_coordinator():
    from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator

    assert _parameters(get_or_create_autoscaling_coordinator) == []


def _loggers():
    from mnist_ray.ray_workarounds import loggers

    for name in (loggers.TOKEN_NOTICE, loggers.UNHANDLED_ERRORS, loggers.RAY_DATA_PROGRESS, loggers.JOB_CLIENT):
        assert _logger_of(name) == name  # the module still logs under its own name


@pytest.mark.parametrize(
    "check",
    [
        _address_file,
        _loopback_node,
        _local_start,
        _own_address,
        _rendezvous,
        _output,
        _autoscaling_coordinator,
        _loggers,
    ],
    ids=lambda check: check.__name__.lstrip("_"),
)
def test_private_ray_names_still_exist(check):
    """One case per module of mnist_ray/ray_workarounds/ that names a private Ray API (its docstring names it)."""
    check()


def test_state_api_fields_still_exist():
    """What ``mnist_ray.ray_workarounds.placement_groups`` reads of Ray's state API, and the call it makes."""
    from ray.util.state import list_actors, list_placement_groups
    from ray.util.state.common import ActorState, PlacementGroupState

    for lister in (list_actors, list_placement_groups):
        assert {"address", "detail", "limit", "raise_on_missing_output"} <= set(_parameters(lister))
    group_fields = {f.name for f in dataclasses.fields(PlacementGroupState)}
    assert {"placement_group_id", "creator_job_id", "state", "bundles"} <= group_fields
    assert {"placement_group_id", "state"} <= {f.name for f in dataclasses.fields(ActorState)}


def test_ray_data_progress_is_shown_or_quieted_by_name():
    import logging

    from mnist_ray.ray_workarounds import loggers

    data, progress = logging.getLogger("ray.data"), logging.getLogger("ray.data._internal.progress")
    saved = data.level, progress.level
    try:
        loggers.show_ray_data_progress(False)
        assert (data.level, progress.level) == (logging.WARNING, logging.ERROR)
        loggers.show_ray_data_progress(True)
        assert (data.level, progress.level) == (logging.INFO, logging.INFO)
    finally:
        data.setLevel(saved[0])
        progress.setLevel(saved[1])
