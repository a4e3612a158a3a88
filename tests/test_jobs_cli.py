"""The jobs' command lines: --help, and bad input failing with one line before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_job(script: str, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "tune.py"])
def test_help_documents_every_flag(script):
    result = run_job(script, "--help")
    assert result.returncode == 0
    lines = [ln.strip() for ln in result.stdout.splitlines() if ln.strip().startswith("--")]
    assert lines and all(len(ln.split(None, 1)) == 2 or ln.endswith("]") for ln in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
        (["--optimizer", "lion"], "argument --optimizer: invalid choice"),
        (["--dataset", "cifar"], "argument --dataset: invalid choice"),
        (["--lr", "0"], "lr must be positive"),
        (["--epochs", "-1"], "epochs must be positive"),
        (["--batch-size", "0"], "batch_size must be positive"),
        (["--batch-size", "2", "--num-workers", "4"], "batch_size 2 is below num_workers 4"),
        (["--config", "/nonexistent.json"], "config file /nonexistent.json does not exist"),
        (["--output", "/proc/mnist_ray_out"], "cannot write to /proc/mnist_ray_out"),
        (["--output", "s3://bucket/runs"], "--output s3://bucket/runs must be a local folder"),
    ],
)
def test_train_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run_job("train.py", "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], result.stderr
    assert "--output" in args or not (tmp_path / "out" / "mnist").exists()  # nothing written
