"""Train the MNIST CNN or ANN with Ray Train, data-parallel over CPU or GPU workers.

Runs locally (an embedded Ray) by default, or on the cluster in RAY_ADDRESS / under
``ray job submit``. Re-running with the same --name resumes from the last checkpoint.
Writes <output>/<name>/{history.parquet, curves.png, config.json, best_checkpoint/model.pt}.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job's working dir

from mnist_ray import cli, cluster, data, reports, runner  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse flags, connect to Ray, train, print where the outputs are."""
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_config_flags(p)
    cli.add_run_flags(p, default_name="mnist")
    p.add_argument("--evaluate", action="store_true", help="then evaluate the best checkpoint on the test set")
    p.add_argument(
        "--reports",
        default=str(Path(cli.RunOptions().output).parent / "reports"),
        help="reports folder for --evaluate (<reports>/<name>-<UTC time>/)",
    )
    args = p.parse_args(argv)
    cfg, opts = cli.config_from_args(args), cli.run_options(args)
    runner.check_resume(cfg, Path(opts.output).expanduser().resolve() / opts.name)
    arrays = data.load(cfg.dataset, opts.data_dir)  # verify and parse the files before Ray starts
    cli.ensure_writable(opts.output)
    if args.evaluate:
        cli.ensure_writable(args.reports, "--reports")
    cluster.connect(args.num_cpus, verbose=args.verbose)
    print(
        f"training {cfg.model} on {cfg.dataset}: {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU"
        f"{' + GPU' if cfg.use_gpu else ''}, {cfg.epochs} epochs, run {opts.name}",
        flush=True,
    )
    out = runner.train(cfg, opts, runner.progress_printer(cfg, lambda line: print(line, flush=True)), arrays)
    m = out.best_metrics
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_mb = m.get("worker_max_rss_mb", float("nan"))
    print(
        f"best epoch {m['epoch']}: val acc {m['val_acc']:.2%}, val loss {m['val_loss']:.4f}; "
        f"peak RSS: driver {driver_mb:.0f} MB, worker {worker_mb:.0f} MB"
    )
    for label, path in [
        ("history", out.history),
        ("curves", out.curves),
        ("config", out.config),
        ("best checkpoint", out.best_checkpoint),
    ]:
        print(f"{label:>16}: {path}")
    if args.evaluate:
        run_id = f"{opts.name}-{reports.new_run_id()}"
        folder, e = reports.evaluate_to_report(
            out.best_checkpoint, args.reports, run_id, arrays=arrays, progress=args.verbose
        )
        print(f"test accuracy {e['accuracy']:.2%}, test loss {e['loss']:.4f} ({e['n']} images)")
        print(f"{'test report':>16}: {folder / 'summary.md'}")
    return 0


if __name__ == "__main__":
    cli.main(main)
