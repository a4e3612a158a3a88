"""Flag definitions shared by the jobs, and the one place user errors become an exit code.

The jobs in ``jobs/`` build their parsers from these helpers; nothing here reads ``sys.argv``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from mnist_ray.config import DATASETS, MODELS, OPTIMIZERS, PRESETS, SCHEDULES, RunOptions, TrainConfig, load_config
from mnist_ray.errors import EXIT_USAGE, MnistRayError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <problem>`` on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see --help)\n")


def parser(description: str) -> argparse.ArgumentParser:
    """A parser whose help shows defaults and whose errors are single lines."""
    return _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """Flags for every TrainConfig field (default None = keep the preset/config-file value)."""
    d = TrainConfig()
    g = p.add_argument_group("training config (override --preset and --config)")
    g.add_argument("--preset", default="default", choices=list(PRESETS), help="named recipe to start from")
    g.add_argument("--config", metavar="FILE.json", help="JSON file of TrainConfig fields (e.g. a sweep's best.json)")
    g.add_argument("--model", choices=MODELS, help=f"architecture [{d.model}]")
    g.add_argument("--dataset", choices=DATASETS, help=f"dataset [{d.dataset}]")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help=f"optimizer [{d.optimizer}]")
    g.add_argument("--lr", type=float, help=f"peak learning rate [{d.lr}]")
    g.add_argument("--weight-decay", type=float, help=f"weight decay on weights [{d.weight_decay}]")
    g.add_argument("--momentum", type=float, help=f"momentum for sgd/rmsprop [{d.momentum}]")
    g.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule [{d.schedule}]")
    g.add_argument("--epochs", type=int, help=f"epochs [{d.epochs}]")
    g.add_argument("--batch-size", type=int, help=f"global batch size, split over workers [{d.batch_size}]")
    g.add_argument("--val-size", type=int, help=f"validation images held out of the training set [{d.val_size}]")
    g.add_argument("--train-limit", type=int, help="use only N training images (0 = all), for smoke runs")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, help=f"random affine augmentation [{d.augment}]")
    g.add_argument("--label-smoothing", type=float, help=f"label smoothing [{d.label_smoothing}]")
    g.add_argument("--dropout", type=float, help=f"dropout before the classifier [{d.dropout}]")
    g.add_argument("--num-workers", type=int, help=f"Ray Train workers [{d.num_workers}]")
    g.add_argument("--cpus-per-worker", type=int, help=f"CPUs (and torch threads) per worker [{d.cpus_per_worker}]")
    g.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, help="one GPU per worker, with AMP")
    g.add_argument("--seed", type=int, help=f"random seed [{d.seed}]")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset, then --config file, then explicit flags."""
    names = [f for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)]
    return load_config(args.preset, args.config, {f: getattr(args, f) for f in names})


def add_run_flags(p: argparse.ArgumentParser, default_name: str) -> None:
    """Flags for RunOptions: names, folders and fault tolerance."""
    d = RunOptions()
    p.add_argument("--name", default=default_name, help="run name; the same name resumes its last checkpoint")
    p.add_argument("--output", default=d.output, help="folder for reports (<output>/<name>/)")
    p.add_argument(
        "--storage-path", help="Ray Train checkpoint storage (path, NFS or s3://bucket/prefix); default --output"
    )
    p.add_argument("--data-dir", help="folder with the four IDX files (raw or .gz); default: the dataset's own place")
    p.add_argument("--max-failures", type=int, default=d.max_failures, help="worker-group restarts after lost workers")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="best checkpoints kept")
    p.add_argument(
        "--wait-for-resources",
        action="store_true",
        help="skip the fail-fast layout check (an autoscaling cluster adds GPU nodes on demand)",
    )
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance (ignored when joining a cluster)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def run_options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from the parsed flags."""
    return RunOptions(
        name=args.name,
        output=args.output,
        storage_path=args.storage_path,
        data_dir=args.data_dir,
        max_failures=args.max_failures,
        keep_checkpoints=args.keep_checkpoints,
        wait_for_resources=args.wait_for_resources,
    )


def ensure_writable(folder: str | Path, flag: str = "--output") -> Path:
    """Create ``folder`` if needed and prove we can write there, before any work starts."""
    if "://" in str(folder):
        raise MnistRayError(f"{flag} {folder} must be a local folder; put checkpoints on s3:// with --storage-path")
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test"):
            pass
    except OSError as exc:
        raise MnistRayError(f"cannot write to {path} ({exc.strerror}): pass a writable {flag}") from None
    return path


def main(job: Callable[[], int | None]) -> None:
    """Run a job function: user errors print one line and exit 2, other failures exit 1."""
    logging.basicConfig(level=os.environ.get("MNIST_RAY_LOG", "INFO"), format="%(message)s", stream=sys.stdout)
    try:
        code = job()
    except MnistRayError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)  # always one line
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the last checkpoint", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
