"""Shared fixtures: one real Ray session on loopback, and one small real training run reused by many tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3"]  # the s3_server session fixture, started before Ray

# Every Ray node the tests start binds to 127.0.0.1, never to this machine's interface address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

REPO = Path(__file__).resolve().parent.parent
MNIST = REPO / "mnist_ray" / "datasets" / "mnist"

# Every file of one evaluation report folder (README "Evaluation" table).
REPORT_FILES = {
    "MANIFEST.json",
    "metrics.parquet",
    "predictions.parquet",
    "confusion_matrix.parquet",
    "confusion_matrix.png",
    "digit_errors.parquet",
    "digit_errors.png",
    "misclassified.png",
    "per_class.parquet",
    "summary.md",
}

# A run small enough for the suite: 2,048 training images, 512 validation images, 2 epochs, 2 workers.
TINY = {"epochs": 2, "train_limit": 2048, "val_size": 512, "batch_size": 64, "augment": False, "lr": 3e-3}


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true", help="run the collected tests in reverse order")
    parser.addoption("--lanes", action="store_true", help="with -n 2: one process per lane (see OWN_PROCESSES_LANE)")


def pytest_terminal_summary(terminalreporter, config):
    """The test order's seed, shown even with -q, so any order-dependent failure can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"random test order: --randomly-seed={seed} (file order: -p no:randomly)")


# `make test` runs the suite in two pytest processes (pytest-xdist with --lanes), one lane each. This lane holds the
# files whose tests mostly wait on other processes (job subprocesses with their own Ray, ray start heads, the
# multi-node cluster) and the sweeps; the other lane holds the rest: in-process runs on the shared Ray, and every
# user of the session's tiny_run, so that run is trained once. In one serial run (python -m bench.suite_idle,
# 2026-11-26) each lane took about 350 s.
OWN_PROCESSES_LANE = {
    "test_tuning.py",
    "test_cluster_jobs.py",
    "test_cluster_connect.py",
    "test_multinode.py",
    "test_s3_jobs.py",
}


def lane(nodeid: str) -> str:
    """The lane (one pytest process's share of the suite) of a test, by its file."""
    return "own-processes" if nodeid.split("::", 1)[0].rsplit("/", 1)[-1] in OWN_PROCESSES_LANE else "shared-ray"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--lanes: each xdist process takes one whole lane (its tests in pytest-randomly's order); else xdist's own."""
    if not config.getoption("--lanes"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid)

    return LaneScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """--reverse: the last test first, to prove no test depends on another having run."""
    if config.getoption("--reverse"):
        items.reverse()


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """A local Ray instance with 2 CPUs, shared by every test that needs Ray.

    The S3 server starts first: Ray's processes inherit the AWS environment that points at it.
    """
    import ray

    from mnist_ray import cluster

    cluster.connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory):
    """A real 2-worker CNN run on an MNIST subset; returns (config, options, outputs, epochs).

    Shared by many tests, so no test may change it: a test that resumes or overwrites a run trains
    or copies its own.
    """
    from mnist_ray import runner
    from mnist_ray.config import RunOptions, TrainConfig

    cfg = TrainConfig(**TINY)
    opts = RunOptions(name="tiny", output=str(tmp_path_factory.mktemp("runs")))
    epochs: list[dict] = []
    outputs = runner.train(cfg, opts, on_epoch=epochs.append)
    return cfg, opts, outputs, epochs
