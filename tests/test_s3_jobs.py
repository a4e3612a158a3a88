"""Every job input and output on s3:// (a real S3 API: moto's server on 127.0.0.1), through the jobs' main().

The tune job's outputs on s3:// are checked by tests/test_tuning.py's ASHA sweep (one sweep for both).
"""

from __future__ import annotations

import io
import uuid

import pandas as pd
import pytest

from mnist_ray.files import publishing, storage
from mnist_ray.files.folders import RunFolder
from mnist_ray.inference import sources
from mnist_ray.jobs import evaluate, train
from tests.conftest import REPORT_FILES
from tests.helpers import assert_one_line_error, call
from tests.s3 import make_bucket

pytestmark = pytest.mark.usefixtures("ray_session")
SMALL = ["--epochs", "1", "--train-limit", "1024", "--val-size", "256", "--batch-size", "64", "--no-augment"]


@pytest.fixture
def prefix() -> str:
    """A fresh prefix in the test bucket."""
    return f"{make_bucket('mnist-ray-tests')}/{uuid.uuid4().hex[:8]}"


def _parquet(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)))


def test_train_with_every_output_on_s3_then_evaluate_there(prefix, capsys):
    runs, reports = f"{prefix}/runs", f"{prefix}/reports"
    result = call(train.main, capsys, *SMALL, "--output", runs, "--name", "s3run", "--evaluate", "--reports", reports)
    assert result.returncode == 0, result.stderr[-3000:]
    run = f"{runs}/s3run"
    for name in ("history.parquet", "curves.png", "config.json", RunFolder.best_checkpoint):
        assert storage.is_file(f"{run}/{name}"), name
    assert "checkpoint_epoch_001" in storage.list_dirs(run)  # Ray Train's own checkpoints, same bucket
    (first,) = storage.list_dirs(reports)
    assert publishing.is_complete(f"{reports}/{first}")
    assert len(_parquet(f"{run}/history.parquet")) == 1

    # the nightly evaluation of what the cluster trained into s3://, reports on s3://
    assert sources.resolve_checkpoint(models_dir=runs) == f"{run}/{RunFolder.best_checkpoint}"
    args = ["--models-dir", runs, "--reports", reports, "--run-id", "nightly", "--actors", "1"]
    result = call(evaluate.main, capsys, *args, "--min-accuracy", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert publishing.is_complete(f"{reports}/nightly")
    names = {f"{d}/{n}" for d in [f"{reports}/nightly"] for n in REPORT_FILES}
    assert all(storage.is_file(n) for n in names)
    metrics = _parquet(f"{reports}/nightly/metrics.parquet")
    assert metrics["passed"].iloc[0] and metrics["checkpoint"].iloc[0] == f"{run}/{RunFolder.best_checkpoint}"
    assert _parquet(f"{reports}/history.parquet")["run_id"].tolist() == [first, "nightly"]


def test_bad_uris_are_one_error_line_before_any_work(prefix, capsys, tmp_path):
    result = call(train.main, capsys, *SMALL, "--output", "s3://no-such-bucket-here/runs")
    assert_one_line_error(result, "bucket no-such-bucket-here does not exist")
    assert_one_line_error(call(train.main, capsys, *SMALL, "--output", "s3:/typo/runs"), "s3:/typo/runs")
    result = call(evaluate.main, capsys, "--run", f"{prefix}/none", "--reports", str(tmp_path))
    assert_one_line_error(result, "has no best_checkpoint/model.pt")
    assert not list(tmp_path.iterdir())
