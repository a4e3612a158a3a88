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


def pytest_terminal_summary(terminalreporter, config):
    """The test order's seed, shown even with -q, so any order-dependent failure can be replayed."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"random test order: --randomly-seed={seed} (file order: -p no:randomly)")


# Seconds each slow file took in one serial run (python -m bench.suite_idle, 2026-11-26). With `make test`'s two
# processes (pytest-xdist, one file at a time each) the slowest files go first, so neither process is left with a
# long file at the end while the other waits. A stale figure costs time, never a result.
FILE_SECONDS = {
    "test_tuning.py": 130,
    "test_cluster_jobs.py": 100,
    "test_faults.py": 75,
    "test_tracking.py": 70,
    "test_training.py": 60,
    "test_evaluation.py": 55,
    "test_compare.py": 50,
    "test_s3_jobs.py": 45,
    "test_cluster_connect.py": 40,
    "test_multinode.py": 30,
}


def pytest_collection_modifyitems(config, items):
    """--reverse: the last test first, to prove no test depends on another having run.

    In several processes (``-n``), files are ordered slowest first; within a file, and among the fast files, the
    order stays pytest-randomly's (a stable sort).
    """
    if config.getoption("--reverse"):
        items.reverse()
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 0))


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
