"""Try bad inputs against every job as a new user would, and tally how each ends.

Each case runs the job's ``main`` in this process, in an empty folder, before any Ray is started (every case
here is knowable before Ray). The promise: exit 2, exactly one ``error:`` line, nothing written. Prints one
line per case and a tally; exits 1 if any case breaks the promise. Run: ``.venv/bin/python bench/bad_inputs.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnist_ray.cluster import connection  # noqa: E402
from mnist_ray.jobs import evaluate, export, predict, train, tune  # noqa: E402
from mnist_ray.settings import cli  # noqa: E402
from mnist_ray.settings.config import TrainConfig  # noqa: E402
from mnist_ray.training import checkpoints, models  # noqa: E402

FLOATS = ["inf", "-inf", "nan", "1e400", "-1", "0", "abc", ""]
TRAIN_FLAGS = {
    "--lr": FLOATS,
    "--weight-decay": ["inf", "nan", "-1", "x"],
    "--momentum": ["inf", "nan", "-0.5", "1.5"],
    "--dropout": ["nan", "1", "-0.1"],
    "--label-smoothing": ["nan", "1", "-1"],
    "--epochs": ["0", "-3", "2.5", "1e9", "x"],
    "--batch-size": ["0", "3", "100000", "-64"],
    "--seed": ["-1", "4294967296", "x"],
    "--val-size": ["0", "1", "59999", "60000"],
    "--train-limit": ["-1", "10"],
    "--num-workers": ["0", "-1"],
    "--cpus-per-worker": ["0"],
    "--gpus-per-worker": ["0", "nan"],
    "--model": ["resnet", ""],
    "--optimizer": ["lion"],
    "--schedule": ["step"],
    "--dataset": ["cifar10"],
    "--ddp-backend": ["mpi"],
    "--preset": ["huge"],
    "--name": ["x" * 300, "a\nb", "../up", ".hidden", "", "a/b"],
    "--keep-checkpoints": ["0", "-1"],
    "--max-failures": ["-2"],
    "--data-dir": ["/nonexistent"],
    "--output": ["/proc/forbidden", "s3:/typo/runs", "nosuch://x/y", "s3://"],
}
TUNE_FLAGS = {
    "--lr-min": ["0", "-1", "inf", "nan"],
    "--lr-max": ["inf", "nan", "0"],
    "--lr-values": ["nan", "inf", "-1"],
    "--num-samples": ["0", "-1"],
    "--reduction-factor": ["nan", "1", "0"],
    "--optimizers": ["lion"],
    "--name": ["x" * 300],
}


def config_files(tmp: Path) -> dict[str, Path]:
    """Damaged --config files."""
    cases = {
        "not json": b"{lr: 1}",
        "Infinity": b'{"lr": Infinity}',
        "NaN": b'{"lr": NaN}',
        "null": b"null",
        "a list": b"[1, 2]",
        "unknown field": b'{"learning_rate": 0.1}',
        "wrong type": b'{"epochs": 2.5}',
        "bad utf-8": b"\xff\xfe",
        "deeply nested": b"[" * 100000 + b"]" * 100000,
        "empty": b"",
    }
    out = {}
    for name, content in cases.items():
        path = tmp / f"{name.replace(' ', '_')}.json"
        path.write_bytes(content)
        out[name] = path
    out["missing"] = tmp / "none.json"
    out["a folder"] = tmp
    return out


def checkpoints_to_try(tmp: Path) -> dict[str, Path]:
    """Damaged checkpoints."""
    (tmp / "good").mkdir()
    good = checkpoints.save(
        tmp / "good",
        model=models.build("cnn", seed=0),
        optimizer=None,
        config=TrainConfig().to_dict(),
        epoch=1,
        history=[],
    )
    state = torch.load(good, weights_only=True)
    made = {
        "empty": b"",
        "random bytes": os.urandom(4096),
        "truncated": good.read_bytes()[:5000],
    }
    out = {}
    for name, content in made.items():
        out[name] = tmp / f"{name.replace(' ', '_')}.pt"
        out[name].write_bytes(content)
    for name, value in {
        "format only": {"format": 1},
        "unknown dataset": {**state, "dataset": "cifar"},
        "unknown model": {**state, "model": "resnet"},
        "state_dict a list": {**state, "state_dict": [1, 2]},
        "wrong architecture": {**state, "model": "ann"},
        "not a dict": [1, 2, 3],
    }.items():
        out[name] = tmp / f"{name.replace(' ', '_')}.pt"
        torch.save(value, out[name])
    out["missing"] = tmp / "none.pt"
    out["/dev/zero"] = Path("/dev/zero")
    out["a folder without model.pt"] = tmp / "emptydir"
    out["a folder without model.pt"].mkdir()
    return out


def run(main, argv: list[str], work: Path) -> tuple[int, list[str], bool]:
    """Exit code, the error lines, and whether anything was written under ``work``."""
    before = set(work.rglob("*"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.run(main, argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # a traceback a user would see
            print(f"{type(e).__name__}: {e}", file=err)
            code = 1
    lines = [ln for ln in (out.getvalue() + err.getvalue()).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ") or "Error" in ln or "Traceback" in ln]
    return code, errors, set(work.rglob("*")) != before


def cases(tmp: Path) -> list[tuple[str, object, list[str]]]:
    out = tmp / "out"
    reports = ["--reports", str(tmp / "reports")]
    found = []
    for flag, values in TRAIN_FLAGS.items():
        for value in values:
            argv = [flag, value] if flag == "--output" else [flag, value, "--output", str(out)]
            found.append((f"train {flag} {value[:20]!r}", train.main, argv))
    for flag, values in TUNE_FLAGS.items():
        for value in values:
            found.append((f"tune {flag} {value[:20]!r}", tune.main, [flag, value, "--output", str(out)]))
    for name, path in config_files(tmp / "configs").items():
        found.append((f"train --config {name}", train.main, ["--config", str(path), "--output", str(out)]))
    ckpts = checkpoints_to_try(tmp / "ckpts")
    for name, path in ckpts.items():
        found.append((f"evaluate --checkpoint {name}", evaluate.main, ["--checkpoint", str(path), *reports]))
        found.append((f"export --checkpoint {name}", export.main, ["--checkpoint", str(path), "--output", str(out)]))
        found.append(
            (
                f"predict --checkpoint {name}",
                predict.main,
                ["--checkpoint", str(path), "--input", str(tmp / "ckpts"), "--output", str(out)],
            )
        )
    good = tmp / "ckpts" / "good" / "model.pt"
    for run_id in ["x" * 300, "a\nb", "../up", ".h"]:
        found.append(
            (
                f"evaluate --run-id {run_id[:20]!r}",
                evaluate.main,
                ["--checkpoint", str(good), *reports, "--run-id", run_id],
            )
        )
    for value in ["99", "-0.1", "nan", "inf"]:
        found.append(
            (
                f"evaluate --min-accuracy {value}",
                evaluate.main,
                ["--checkpoint", str(good), *reports, "--min-accuracy", value],
            )
        )
    for value in ["0", "-1"]:
        found.append(
            (f"evaluate --actors {value}", evaluate.main, ["--checkpoint", str(good), *reports, "--actors", value])
        )
        found.append(
            (
                f"evaluate --batch-size {value}",
                evaluate.main,
                ["--checkpoint", str(good), *reports, "--batch-size", value],
            )
        )
    found.append(("evaluate --run /nonexistent", evaluate.main, ["--run", "/nonexistent", *reports]))
    found.append(
        ("evaluate --models-dir empty", evaluate.main, ["--models-dir", str(tmp / "ckpts" / "emptydir"), *reports])
    )
    for name, value in {
        "missing": "/nonexistent",
        "empty folder": str(tmp / "ckpts" / "emptydir"),
        "text file": str(tmp / "configs" / "null.json"),
    }.items():
        found.append(
            (
                f"predict --input {name}",
                predict.main,
                ["--checkpoint", str(good), "--input", value, "--output", str(out)],
            )
        )
    found.append(
        (
            "predict --invert maybe",
            predict.main,
            ["--checkpoint", str(good), "--input", str(tmp), "--invert", "maybe", "--output", str(out)],
        )
    )
    found.append(
        ("export --format tflite", export.main, ["--checkpoint", str(good), "--format", "tflite", "--output", str(out)])
    )
    found.append(("train --no-such-flag", train.main, ["--no-such-flag"]))
    return found


def _reached_ray(*args, **kwargs) -> None:
    raise RuntimeError("reached Ray: the input was accepted")


def main() -> int:
    connection.connect = _reached_ray  # every case must end before Ray: one that gets there is reported, not run
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "configs").mkdir()
        (tmp / "ckpts").mkdir()
        all_cases = cases(tmp)
        kept = broken = 0
        for name, main_fn, argv in all_cases:
            code, errors, wrote = run(main_fn, argv, tmp / "out")
            ok = code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and not wrote
            kept += ok
            broken += not ok
            print(
                f"{'ok ' if ok else 'BAD'} exit {code} {name}: {errors[0][:140] if errors else '(no error line)'}"
                + ("" if not wrote else " [wrote files]")
            )
        print(f"{len(all_cases)} bad inputs: {kept} end with one error line, exit 2, nothing written; {broken} do not")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
