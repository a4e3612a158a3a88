"""Sweep learning rate, optimizer and model with Ray Tune + ASHA, running the train job's own loop.

Writes <output>/<name>/{trials.parquet, tune.png, best.json, best_checkpoint/model.pt};
best.json is accepted by ``jobs/train.py --config``. An interrupted sweep continues with --resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout or a job's working dir

from mnist_ray import cli, cluster, tuning  # noqa: E402
from mnist_ray.config import MODELS, OPTIMIZERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse flags, connect to Ray, sweep, print the best trial and where the outputs are."""
    p = cli.parser(__doc__.splitlines()[0])
    cli.add_config_flags(p)
    cli.add_run_flags(p, default_name="sweep")
    s = p.add_argument_group("search space and scheduling")
    s.add_argument("--lr-min", type=float, default=1e-4, help="lower end of the log-uniform learning-rate range")
    s.add_argument("--lr-max", type=float, default=1e-1, help="upper end of the log-uniform learning-rate range")
    s.add_argument("--lr-values", type=float, nargs="+", default=[], help="grid over these learning rates instead")
    s.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), help="optimizers to sample from")
    s.add_argument("--models", nargs="+", default=["cnn"], help=f"models to sample from ({', '.join(MODELS)})")
    s.add_argument("--batch-sizes", type=int, nargs="+", default=[], help="global batch sizes to sample from")
    s.add_argument("--weight-decay-range", type=float, nargs=2, metavar=("MIN", "MAX"), help="log-uniform range")
    s.add_argument("--num-samples", type=int, default=8, help="trials (per --lr-values entry when gridding)")
    s.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    s.add_argument("--reduction-factor", type=float, default=2.0, help="ASHA: keep 1/factor of trials per rung")
    s.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0 = what the cluster fits)")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep --name (its saved definition; search flags are ignored)",
    )
    args = p.parse_args(argv)
    if args.epochs is None and args.config is None and args.preset == "default":
        args.epochs = 3  # sweeps compare short runs; a preset or config file keeps its own epochs
    workers = args.num_workers  # None = derived from the cluster by tuning.plan
    base = cli.config_from_args(args)
    space = tuning.SearchSpace(
        args.lr_min,
        args.lr_max,
        tuple(args.lr_values),
        tuple(args.optimizers),
        tuple(args.models),
        tuple(args.batch_sizes),
        tuple(args.weight_decay_range) if args.weight_decay_range else None,
    )
    opts = tuning.SweepOptions(
        args.num_samples,
        args.grace_period,
        args.reduction_factor,
        args.max_concurrent,
        cli.run_options(args),
        args.resume,
    )
    cli.ensure_writable(opts.run.output)
    cluster.connect(args.num_cpus, verbose=args.verbose)
    out = tuning.sweep(base, space, opts, workers, emit=lambda line: print(line, flush=True))
    print(
        f"{out['trials_run']} trials in {out['wall_s']:.0f}s, {out['stopped_early']} stopped early by ASHA; "
        f"best {out['best_trial']}: val acc {out['best_val_acc']:.2%}"
    )
    for label in ("trials", "plot", "best_config", "best_checkpoint"):
        print(f"{label:>16}: {out[label]}")
    return 0


if __name__ == "__main__":
    cli.main(main)
