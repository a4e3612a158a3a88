"""Config validation: bad values fail with a message that names the fix; files and flags merge."""

from __future__ import annotations

import json

import pytest

from mnist_ray.errors import ConfigError
from mnist_ray.settings.config import RunOptions, TrainConfig, load_config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "resnet"}, "unknown model 'resnet'; valid: ann, cnn"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'; valid: sgd, adam, adamw, rmsprop"),
        ({"dataset": "cifar10"}, "unknown dataset 'cifar10'"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"lr": 0.0}, r"lr must be in \(0, 10\], got 0.*--lr"),
        ({"lr": 50.0}, r"lr must be in \(0, 10\], got 50: pass --lr in \(0, 10\]"),
        ({"lr": -1e-3}, r"lr must be in \(0, 10\]"),
        ({"epochs": 0}, r"epochs must be in \[1, 10000\].*--epochs"),
        ({"batch_size": -8}, "batch_size must be in"),
        ({"batch_size": 3, "num_workers": 4}, "batch_size 3 is below num_workers 4"),
        ({"batch_size": 10, "num_workers": 4}, "does not split evenly"),
        ({"val_size": 60000}, "val_size must be in"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"val_size": 0}, "val_size must be in"),
        ({"val_size": 1, "num_workers": 2}, r"val_size 1 gives a worker no validation .* --num-workers \(2\)"),
        ({"train_limit": 10}, "10 training images .* fewer than one batch of 128"),
        # every float is finite and every number in its field's range, by one rule (issue: bad inputs)
        ({"lr": float("inf")}, "lr must be a finite number.*--lr"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
        ({"momentum": float("inf")}, "momentum must be a finite number"),
        ({"dropout": float("nan")}, "dropout must be a finite number"),
        ({"label_smoothing": float("nan")}, "label_smoothing must be a finite number"),
        ({"seed": -1}, r"seed must be in \[0, 4294967295\].*--seed"),
        ({"val_size": 59999}, "1 training images .* fewer than one batch"),
        ({"batch_size": 100000}, "batch_size must be in"),
        ({"gpus_per_worker": 0.0}, r"gpus_per_worker must be in \(0, 1\], got 0"),
        ({"use_gpu": True, "gpus_per_worker": 0.5, "ddp_backend": "nccl", "num_workers": 2}, "nccl needs one GPU"),
        ({"ddp_backend": "mpi"}, "unknown ddp_backend 'mpi'; valid: auto, gloo, nccl"),
    ],
)
def test_invalid_values_are_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_file_then_flags_override_preset(tmp_path):
    f = tmp_path / "best.json"
    f.write_text(json.dumps({"optimizer": "sgd", "lr": 0.05, "epochs": 3}))
    cfg = load_config("smoke", str(f), {"lr": 0.01, "model": None})
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.train_limit) == ("sgd", 0.01, 3, 2048)


def test_unknown_field_in_file_is_named(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="unknown config field.*learning_rate"):
        load_config("default", str(f))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("default", str(tmp_path / "nope.json"))
    for damage, message in [
        (b"{not json", "not valid JSON"),
        (b'{"lr": Infinity}', "Infinity is not a number JSON allows"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"null", "must hold a JSON object of TrainConfig fields, not NoneType"),
        (b"\xff\xfe{", "cannot read config file"),
    ]:
        (tmp_path / "bad.json").write_bytes(damage)
        with pytest.raises(ConfigError, match=message):
            load_config("default", str(tmp_path / "bad.json"))


def test_round_trip_through_dict():
    cfg = TrainConfig(model="ann", lr=0.02, num_workers=1)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.per_worker_batch == cfg.batch_size


def test_run_options_validate_names():
    for bad in ("../escape", "a" * 300, "line\nbreak", "", ".hidden"):
        with pytest.raises(ConfigError, match="plain folder name"):
            RunOptions(name=bad)
    plain = RunOptions(output="/tmp/x").folder
    assert plain.path == plain.checkpoints == "/tmp/x/mnist" and plain.storage_root == "/tmp/x"
    apart = RunOptions(output="/tmp/x", storage_path="s3://bucket/p").folder
    assert apart.path == "/tmp/x/mnist" and apart.checkpoints == "s3://bucket/p/mnist"
    assert apart.storage_root == "s3://bucket/p" and apart.best_checkpoint == "/tmp/x/mnist/best_checkpoint/model.pt"


def test_wrong_types_in_a_config_file_are_named(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 2.5}))
    with pytest.raises(ConfigError, match="config field epochs must be int, got 2.5"):
        load_config("default", str(f))
    f.write_text(json.dumps({"lr": 1, "augment": "yes"}))
    with pytest.raises(ConfigError, match="config field augment must be bool"):
        load_config("default", str(f))
    with pytest.raises(ConfigError, match=r"config file .* does not exist \(or is not a file\)"):
        load_config("default", str(tmp_path))


def test_relative_storage_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert RunOptions(storage_path="ckpts").folder.storage_root == str(tmp_path / "ckpts")


def test_each_class_declares_its_own_intervals():
    """A field's interval belongs to its class: the evaluation's batch may exceed the training set, a train batch not;
    sweep options and search spaces are checked by the same rule as the training config."""
    from mnist_ray.jobs.evaluate import EvalOptions
    from mnist_ray.training.search import SearchSpace, SweepOptions

    assert EvalOptions(batch_size=100_000).batch_size == 100_000
    with pytest.raises(ConfigError, match=r"batch_size must be in \[1, 60000\]"):
        TrainConfig(batch_size=100_000)
    with pytest.raises(ConfigError, match=r"actors must be in \[1, 1024\], got 0: pass --actors"):
        EvalOptions(actors=0)
    with pytest.raises(ConfigError, match=r"min_accuracy must be in \[0, 1\], got 2"):
        EvalOptions(min_accuracy=2.0)
    with pytest.raises(ConfigError, match=r"reduction_factor must be in \(1, inf\), got 1: pass --reduction-factor"):
        SweepOptions(reduction_factor=1.0)
    with pytest.raises(ConfigError, match="reduction_factor must be a finite number"):
        SweepOptions(reduction_factor=float("nan"))
    with pytest.raises(ConfigError, match=r"lr_values must be in \(0, inf\), got -1"):
        SearchSpace(lr_values=(1e-3, -1.0))
    with pytest.raises(ConfigError, match="unknown optimizers 'lamb'; valid: sgd, adam, adamw, rmsprop"):
        SearchSpace(optimizers=("adam", "lamb"))
