"""The IDX loader on the real MNIST files, and every way a file can be wrong."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from mnist_ray import data
from mnist_ray.errors import DataError
from tests.conftest import MNIST

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist")


def test_shapes_dtypes_and_label_counts(mnist):
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.train_x.dtype == np.uint8
    assert mnist.test_x.shape == (10000, 28, 28)
    assert np.bincount(mnist.train_y).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_normalisation_gives_zero_mean_unit_std(mnist):
    x = data.normalize(mnist.train_x[:20000])
    assert tuple(x.shape) == (20000, 1, 28, 28)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01


def test_split_is_seeded_disjoint_and_limit_keeps_validation():
    train, val = data.split_train_val(60000, 5000, seed=1)
    assert len(val) == 5000 and len(train) == 55000 and not set(train) & set(val)
    train2, val2 = data.split_train_val(60000, 5000, seed=1, limit=1000)
    assert np.array_equal(val, val2) and len(train2) == 1000
    assert not np.array_equal(val, data.split_train_val(60000, 5000, seed=2)[1])


def _copy(tmp_path):
    for f in MNIST.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _rewrite(path, mutate):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(bytes(mutate(raw))))


def test_raw_files_in_torchvision_layout_load(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST.glob("*.gz"):
        (raw / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    assert data.load("mnist", tmp_path).test_y.shape == (10000,)


def test_checksum_mismatch_names_the_file(tmp_path):
    _rewrite(_copy(tmp_path) / "t10k-images-idx3-ubyte.gz", lambda b: b[:-1] + bytes([(b[-1] + 1) % 256]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: SHA-256 mismatch"):
        data.load("mnist", tmp_path)


def test_truncated_gzip(tmp_path):
    f = _copy(tmp_path) / "train-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: corrupted or truncated gzip"):
        data.load("mnist", tmp_path)


def test_truncated_raw_file(tmp_path):
    _rewrite(_copy(tmp_path) / "t10k-images-idx3-ubyte.gz", lambda b: b[:-100])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: truncated"):
        data.load("mnist", tmp_path)


def test_wrong_magic_number(tmp_path):
    _rewrite(_copy(tmp_path) / "t10k-labels-idx1-ubyte.gz", lambda b: b"\x00\x00\x08\x03" + b[4:])
    with pytest.raises(DataError, match="wrong IDX magic number 2051, expected 2049"):
        data.load("mnist", tmp_path)


def test_image_label_count_mismatch(tmp_path):
    def drop_one(b):  # a consistent, shorter labels file: header count 9999, 9999 labels
        return b[:4] + (9999).to_bytes(4, "big") + b[8:-1]

    _rewrite(_copy(tmp_path) / "t10k-labels-idx1-ubyte.gz", drop_one)
    with pytest.raises(DataError, match="test: 10000 images but 9999 labels"):
        data.load("mnist", tmp_path)


def test_missing_file_in_explicit_folder(tmp_path):
    (_copy(tmp_path) / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte"):
        data.load("mnist", tmp_path)


def test_download_failure_says_where_to_put_files_and_leaves_nothing(tmp_path):
    # Port 9 on loopback refuses connections: the same failure as a machine with no network.
    with pytest.raises(DataError, match="pass --data-dir"):
        data.download("mnist", tmp_path / "cache", mirrors=("http://127.0.0.1:9/",))
    assert not (tmp_path / "cache").exists()  # no lock file, no empty cache folder left behind


@pytest.mark.skipif(not data.DATASET_INFO["fashion-mnist"].default_dir.is_dir(), reason="dataset-fashion-mnist absent")
def test_fashion_mnist_from_debian_package():
    arrays = data.load("fashion-mnist")
    assert arrays.train_x.shape == (60000, 28, 28) and np.bincount(arrays.test_y).tolist() == [1000] * 10
    x = data.normalize(arrays.train_x[:20000], data.DATASET_INFO["fashion-mnist"].normalization)
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01  # its own statistics, not MNIST's


def test_each_dataset_carries_its_own_statistics_and_class_names():
    mnist, fashion = data.DATASET_INFO["mnist"], data.DATASET_INFO["fashion-mnist"]
    assert (mnist.normalization.mean, mnist.normalization.std) == (0.1307, 0.3081)
    assert (fashion.normalization.mean, fashion.normalization.std) == (0.2860, 0.3530)
    assert mnist.classes == tuple("0123456789") and (mnist.noun, mnist.plural) == ("digit", "digits")
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot" and len(fashion.classes) == 10
    assert (fashion.noun, fashion.plural) == ("class", "classes")
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    assert float(data.normalize(images, fashion.normalization).max()) == pytest.approx(fashion.normalization.background)
    assert float(data.normalize(images).max()) == pytest.approx(-0.1307 / 0.3081)  # no stats: MNIST's


def test_a_wheel_ships_the_mnist_files(tmp_path):
    """A non-editable install (a wheel on a cluster image) finds MNIST inside the package."""
    import subprocess
    import sys
    import zipfile

    from tests.conftest import REPO

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mnist_ray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert f"mnist_ray/datasets/mnist/{stem}.gz" in names
    assert "mnist_ray/jobs/train.py" in names


def _checkpoint(folder, dataset: str, **kw):
    from mnist_ray.settings.config import TrainConfig
    from mnist_ray.training import checkpoints, models

    config = TrainConfig(dataset=dataset).to_dict()
    model = models.build("cnn", seed=0)
    return checkpoints.save(folder, model=model, optimizer=None, config=config, epoch=1, history=[], **kw)


def test_a_checkpoint_is_scored_with_the_statistics_it_was_trained_with(tmp_path):
    """Saved beside the weights; the evaluation's Predictor normalises with them; older checkpoints get MNIST's."""
    import torch

    from mnist_ray.errors import CheckpointError
    from mnist_ray.inference import scoring
    from mnist_ray.training import checkpoints

    fashion = data.DATASET_INFO["fashion-mnist"].normalization
    state = checkpoints.load(_checkpoint(tmp_path, "fashion-mnist"))
    assert state["normalization"] == {"mean": 0.2860, "std": 0.3530} and checkpoints.normalization(state) == fashion
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    predictor = scoring.Predictor({"paths": [str(tmp_path / "model.pt")]})
    model = checkpoints.build_model(state)
    with torch.inference_mode():
        expected = torch.log_softmax(model(data.normalize(images, fashion)), 1)
        assert torch.allclose(predictor.log_probs(images), expected, atol=1e-5)
        assert not torch.allclose(torch.log_softmax(model(data.normalize(images)), 1), expected, atol=1e-3)
    del state["normalization"]  # as a checkpoint saved before it was stored: trained with MNIST's figures
    torch.save(state, tmp_path / "old.pt")
    assert checkpoints.normalization(checkpoints.load(tmp_path / "old.pt")) == checkpoints.LEGACY_NORMALIZATION
    torch.save({**state, "normalization": {"mean": 0.1, "std": 0.0}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="damaged mnist_ray checkpoint \\(normalization"):
        checkpoints.load(tmp_path / "bad.pt")
