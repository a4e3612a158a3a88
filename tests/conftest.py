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

    from mnist_ray.cluster import connection

    connection.connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory):
    """A real CNN run on an MNIST subset in the train job's auto layout on the suite's 2-CPU Ray (1 worker x 2 CPUs),
    so a job run with the same flags repeats it exactly; returns (config, options, outputs, epochs).

    Shared by many tests, so no test may change it: a test that resumes or overwrites a run trains
    or copies its own.
    """
    from mnist_ray.settings.config import RunOptions, TrainConfig
    from mnist_ray.training import trainer

    cfg = TrainConfig(**TINY, cpus_per_worker=2)
    opts = RunOptions(name="tiny", output=str(tmp_path_factory.mktemp("runs")))
    epochs: list[dict] = []
    outputs = trainer.train(cfg, opts, on_epoch=epochs.append)
    return cfg, opts, outputs, epochs


@pytest.fixture(scope="session")
def tiny_ann(ray_session, tmp_path_factory):
    """A tiny ANN run with the suite's tiny settings: the notebook's other model (comparisons, ensembles)."""
    from mnist_ray.settings.config import RunOptions, TrainConfig
    from mnist_ray.training import trainer

    opts = RunOptions(name="tiny-ann", output=str(tmp_path_factory.mktemp("ann-runs")))
    return trainer.train(TrainConfig(**TINY, model="ann"), opts)
