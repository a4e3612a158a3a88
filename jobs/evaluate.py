"""Evaluate a trained checkpoint on the 10k test set with Ray Data batch inference.

Writes <reports>/<run-id>/ (metrics, predictions, confusion matrix, digit error ranking, figures,
summary.md) atomically, appends to <reports>/history.parquet, and exits 3 when --min-accuracy
is not met, so cron or CI can alert.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job's working dir

from mnist_ray import checkpoints, cli, cluster, data, evaluation, reports  # noqa: E402
from mnist_ray.config import DATASETS, RunOptions  # noqa: E402
from mnist_ray.errors import EXIT_BELOW_THRESHOLD, MnistRayError  # noqa: E402

DEFAULT_REPORTS = str(Path(RunOptions().output).parent / "reports")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, pick the checkpoint, connect to Ray, evaluate, write the report."""
    p = cli.parser(__doc__.splitlines()[0])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", help="a model.pt file or a checkpoint folder")
    which.add_argument("--run", help="a training run or sweep folder: evaluates its best checkpoint")
    which.add_argument("--models-dir", default=RunOptions().output, help="evaluate the newest run under this folder")
    p.add_argument("--reports", default=DEFAULT_REPORTS, help="reports folder (<reports>/<run-id>/)")
    p.add_argument("--run-id", default=None, help="report name [UTC timestamp]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report with the same run id")
    p.add_argument("--min-accuracy", type=float, help=f"exit {EXIT_BELOW_THRESHOLD} when test accuracy is below this")
    p.add_argument("--dataset", choices=DATASETS, help="refuse a checkpoint trained on another dataset")
    p.add_argument("--data-dir", help="folder with the four IDX files; default: the dataset's own place")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per inference actor")
    p.add_argument("--actors", type=int, default=2, help="inference actors in the Ray Data pool")
    p.add_argument("--batch-size", type=int, default=1000, help="images per inference batch")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray instance (ignored when joining a cluster)")
    p.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    args = p.parse_args(argv)
    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise MnistRayError(f"--min-accuracy {args.min_accuracy} must be a fraction in [0, 1], e.g. 0.99")
    if args.actors < 1 or args.batch_size < 1:
        raise MnistRayError("--actors and --batch-size must be positive")
    checkpoint = evaluation.resolve_checkpoint(args.checkpoint, args.run, args.models_dir)
    run_id = args.run_id or reports.new_run_id()
    reports.check_run_dir(args.reports, run_id, args.overwrite)
    state = checkpoints.load(checkpoint, dataset=args.dataset)  # missing, corrupt, unsafe or wrong dataset: stop here
    checkpoints.build_model(state)
    arrays = data.load(state["dataset"], args.data_dir)
    cli.ensure_writable(args.reports, "--reports")  # the first thing written, after every check that needs no Ray
    cluster.connect(args.num_cpus, verbose=args.verbose)
    return report(checkpoint, args.reports, run_id, args, arrays)


def report(checkpoint: Path, folder: str, run_id: str, args, arrays: data.Arrays) -> int:
    """Evaluate, print the headline figures and paths, and apply the accuracy threshold."""
    print(f"evaluating {checkpoint}", flush=True)
    path, m = reports.evaluate_to_report(
        checkpoint,
        folder,
        run_id,
        args.overwrite,
        dataset=args.dataset,
        use_gpu=args.use_gpu,
        actors=args.actors,
        batch_size=args.batch_size,
        arrays=arrays,
        progress=args.verbose,
    )
    print(
        f"test accuracy {m['accuracy']:.2%}, loss {m['loss']:.4f}, macro F1 {m['macro_f1']:.4f} "
        f"on {m['n']} images in {m['seconds']:.1f}s"
    )
    print(f"report: {path}\nsummary: {path / 'summary.md'}")
    if args.min_accuracy is not None and m["accuracy"] < args.min_accuracy:
        print(f"error: accuracy {m['accuracy']:.4f} is below --min-accuracy {args.min_accuracy}", file=sys.stderr)
        return EXIT_BELOW_THRESHOLD
    return 0


if __name__ == "__main__":
    cli.main(main)
