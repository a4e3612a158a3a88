"""Bad input to the jobs: one `error:` line, exit code 2, nothing written; checkpoints never run code."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
import torch

from mnist_ray.errors import CheckpointError
from mnist_ray.jobs import evaluate, train
from mnist_ray.training import checkpoints, models
from tests.conftest import MNIST
from tests.helpers import assert_one_line_error, call


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 10),
            "corrupted or truncated gzip",
        ),
        (lambda d: (d / "train-images-idx3-ubyte.gz").unlink(), "lacks train-images-idx3-ubyte"),
        (
            lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(12))),
            "wrong IDX magic number 2049, expected 2051",
        ),
    ],
)
def test_train_with_bad_data_dir_fails_before_ray(tmp_path, mutate, message, capsys):
    data = tmp_path / "data"
    shutil.copytree(MNIST, data)
    mutate(data)
    result = call(train.main, capsys, "--data-dir", str(data), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, message)
    assert not (tmp_path / "out" / "mnist").exists()


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """A real (untrained) cnn checkpoint in the project's format."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = models.build("cnn", seed=0)
    from mnist_ray.settings.config import TrainConfig

    return checkpoints.save(folder, model=model, optimizer=None, config=TrainConfig().to_dict(), epoch=1, history=[])


class Payload:
    """Unpickling this runs code: what a malicious checkpoint would carry."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_checkpoint_does_not_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "evil": Payload(str(marker))}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="holds objects other than weights; refusing"):
        checkpoints.load(tmp_path)
    result = call(evaluate.main, capsys, "--checkpoint", str(tmp_path / "model.pt"), "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, "refusing to load it")
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_evaluate_rejects_bad_checkpoints(tmp_path, good_checkpoint, capsys):
    reports = str(tmp_path / "reports")
    assert_one_line_error(
        call(evaluate.main, capsys, "--checkpoint", str(tmp_path / "none.pt"), "--reports", reports), "does not exist"
    )
    (tmp_path / "corrupt.pt").write_bytes(good_checkpoint.read_bytes()[:5000])
    assert_one_line_error(
        call(evaluate.main, capsys, "--checkpoint", str(tmp_path / "corrupt.pt"), "--reports", reports),
        "is corrupt or truncated",
    )
    assert_one_line_error(
        call(
            evaluate.main,
            capsys,
            "--checkpoint",
            str(good_checkpoint),
            "--dataset",
            "fashion-mnist",
            "--reports",
            reports,
        ),
        "is a dataset 'mnist', not 'fashion-mnist'",
    )
    state = torch.load(good_checkpoint, weights_only=True)
    state["model"] = "ann"  # cnn weights labelled as another architecture
    torch.save(state, tmp_path / "mislabelled.pt")
    assert_one_line_error(
        call(evaluate.main, capsys, "--checkpoint", str(tmp_path / "mislabelled.pt"), "--reports", reports),
        "do not fit the ann architecture",
    )
    assert_one_line_error(
        call(evaluate.main, capsys, "--checkpoint", str(good_checkpoint), "--min-accuracy", "99", "--reports", reports),
        "min_accuracy must be in [0, 1]",
    )
    assert not (tmp_path / "reports").exists()


def test_existing_report_id_is_refused_before_work(tmp_path, good_checkpoint, capsys):
    (tmp_path / "taken").mkdir()  # any existing folder, complete or not, needs --overwrite
    assert_one_line_error(
        call(
            evaluate.main, capsys, "--checkpoint", str(good_checkpoint), "--reports", str(tmp_path), "--run-id", "taken"
        ),
        "already exists: pass --overwrite",
    )


@pytest.mark.usefixtures("ray_session")
def test_more_workers_than_the_cluster_fails_fast(tmp_path, capsys):
    result = call(train.main, capsys, "--num-workers", "8", "--batch-size", "64", "--output", str(tmp_path))
    assert_one_line_error(result, "need 8 CPUs but the cluster has 2")
    no_gpu = call(train.main, capsys, "--use-gpu", "--output", str(tmp_path))  # auto: one worker per GPU, and none
    assert_one_line_error(no_gpu, "--use-gpu needs 1 GPU (1 per worker) but the cluster has 0")
    two = call(train.main, capsys, "--use-gpu", "--num-workers", "2", "--output", str(tmp_path))
    assert_one_line_error(two, "--use-gpu needs 2 GPUs")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p, good: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p, good: p.write_bytes(os.urandom(4096)), "is corrupt or truncated (not a complete torch zip archive)"),
        (lambda p, good: torch.save({"format": 1}, p), "is a damaged mnist_ray checkpoint (missing or wrong: config"),
        (lambda p, good: torch.save({**torch.load(good), "dataset": "cifar"}, p), "names an unknown dataset 'cifar'"),
        (lambda p, good: torch.save({**torch.load(good), "model": "resnet"}, p), "unknown model 'resnet'; valid: ann"),
        (lambda p, good: torch.save({**torch.load(good), "state_dict": [1, 2]}, p), "missing or wrong: state_dict"),
    ],
)
def test_every_kind_of_bad_checkpoint_is_one_line(tmp_path, good_checkpoint, damage, message, capsys):
    bad = tmp_path / "model.pt"
    damage(bad, good_checkpoint)
    result = call(evaluate.main, capsys, "--checkpoint", str(bad), "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, message)
    assert not (tmp_path / "r").exists()


def test_a_device_file_is_not_a_checkpoint(tmp_path, capsys):
    result = call(evaluate.main, capsys, "--checkpoint", "/dev/zero", "--reports", str(tmp_path / "r"))
    assert_one_line_error(result, "/dev/zero does not exist")


@pytest.mark.parametrize("run_id", ["x" * 300, "two\nlines", "../up", ".hidden"])
def test_bad_report_ids_are_refused_before_work(tmp_path, good_checkpoint, run_id, capsys):
    args = ["--checkpoint", str(good_checkpoint), "--reports", str(tmp_path / "r"), "--run-id", run_id]
    assert_one_line_error(call(evaluate.main, capsys, *args), "must be a plain folder name")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage", [b"\xff\xfe not utf-8", b"null", b"[1, 2]", b'{"model": 3}'])
def test_a_damaged_run_config_on_resume_is_named(tmp_path, damage, capsys):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "config.json").write_bytes(damage)
    result = call(train.main, capsys, "--preset", "smoke", "--output", str(tmp_path))
    assert_one_line_error(result, "config.json is damaged")
    assert_one_line_error(result, "pass a new --name or delete")
