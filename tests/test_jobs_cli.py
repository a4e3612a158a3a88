"""The jobs' command lines: flags derived from the config classes, real defaults in --help, one-line errors."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from mnist_ray.errors import ConfigError
from mnist_ray.jobs import evaluate, train, tune
from mnist_ray.settings import cli
from mnist_ray.settings.config import TrainConfig
from tests.helpers import assert_one_line_error, call, run_job

JOBS = {"train": train.main, "tune": tune.main, "evaluate": evaluate.main}


def _help(main, capsys) -> str:
    result = call(main, capsys, "--help")
    assert result.returncode == 0
    return result.stdout


@pytest.mark.parametrize("job", JOBS)
def test_help_documents_every_flag_with_its_real_default(job, capsys):
    text = _help(JOBS[job], capsys)
    assert "(default: None)" not in text and "default: None" not in text
    flags = re.findall(r"^  (--[a-z0-9-]+)", text, flags=re.M)  # flag lines; wrapped help is indented deeper
    assert len(flags) == len(set(flags)) > 5
    entries = re.split(r"\n\s+(?=--[a-z])", text)
    undocumented = [e.split()[0] for e in entries if e.lstrip().startswith("--") and len(e.split("\n")[0].split()) < 2]
    assert not [f for f in undocumented if f != "--help"], undocumented


def test_each_job_shows_its_own_epochs_default(capsys):
    assert re.search(r"--epochs EPOCHS\s+Passes over the training split. \(default: 12\)", _help(train.main, capsys))
    tune_help = " ".join(_help(tune.main, capsys).split())
    assert "--epochs EPOCHS Passes over the training split. (default: 3)" in tune_help
    assert "--keep-checkpoints" not in tune_help and "continued only with --resume" in tune_help


def test_a_new_config_field_reaches_help_and_config_with_no_other_edit():
    @dataclass(frozen=True)
    class Extended(TrainConfig):
        warmup_epochs: int = 3
        """Epochs of linear warm-up."""

    p = cli.parser("test")
    cli.add_fields(p, Extended, Extended(), keep_unset=True)
    assert "Epochs of linear warm-up. (default: 3)" in p.format_help()
    assert cli.build(Extended, p.parse_args(["--warmup-epochs", "5"])).warmup_epochs == 5
    assert Extended.from_dict({"warmup_epochs": 4, "lr": 1e-3}).warmup_epochs == 4  # what --config reads
    with pytest.raises(ConfigError, match="warmup_epochs must be int"):
        Extended.from_dict({"warmup_epochs": "4"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
        (["--optimizer", "lion"], "argument --optimizer: invalid choice"),
        (["--dataset", "cifar"], "argument --dataset: invalid choice"),
        (["--lr", "0"], "lr must be in (0, 10], got 0"),
        (["--epochs", "-1"], "epochs must be in [1, 10000]"),
        (["--batch-size", "0"], "batch_size must be in [1, 60000]"),
        (["--batch-size", "2", "--num-workers", "4"], "batch_size 2 is below num_workers 4"),
        (["--config", "/nonexistent.json"], "config file /nonexistent.json does not exist"),
        (["--output", "/proc/mnist_ray_out"], "/proc/mnist_ray_out"),
    ],
)
def test_train_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    result = call(train.main, capsys, "--output", str(tmp_path / "out"), *args)
    assert_one_line_error(result, message)
    assert "--output" in args or not (tmp_path / "out" / "mnist").exists()  # nothing written


def test_a_real_process_exits_2_with_one_line(tmp_path):
    """The entrypoint script itself (not only main): exit status and stderr as a shell sees them."""
    result = run_job("train.py", "--lr", "nan", "--output", str(tmp_path / "out"), timeout=60)
    assert_one_line_error(result, "lr must be a finite number")
    assert not (tmp_path / "out").exists()
