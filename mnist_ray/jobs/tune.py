"""Sweep learning rate, optimizer and model with Ray Tune + ASHA, running the train job's own loop.

Writes <output>/<name>/{trials.parquet, tune.png, best.json, best_checkpoint/model.pt} to a folder
or an s3:// URI; best.json is accepted by `jobs/train.py --config`. An interrupted sweep continues
with --resume. --seeds N trains one recipe N times instead, every trial to the end: the members of an ensemble
(`jobs/evaluate.py --run <sweep> --ensemble-top K` scores the K best by validation accuracy).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import replace

from mnist_ray.cluster import connection, layout, stop
from mnist_ray.files import lease, storage
from mnist_ray.reports import mlflow_store, tracking
from mnist_ray.settings import cli
from mnist_ray.settings.config import RayOptions, RunOptions
from mnist_ray.training import search, sweep

emit = functools.partial(print, flush=True)
JOB_DEFAULTS = {"epochs": search.SWEEP_EPOCHS}
"""The sweep's own defaults, below a preset, --config and flags (with --seeds, the train job's instead)."""


def main(argv: list[str] | None = None) -> int:
    """Parse flags, check everything that needs no Ray, connect, sweep, print the best trial and outputs."""
    p = cli.parser(__doc__)
    cli.add_config_flags(p, JOB_DEFAULTS)
    cli.add_run_flags(
        p,
        RunOptions(name="sweep"),
        skip=("keep_checkpoints",),  # each trial keeps its best checkpoint only
        help_overrides={"name": "Sweep name; an existing sweep is continued only with --resume."},
    )
    cli.add_fields(p.add_argument_group("search space"), search.SearchSpace, search.SearchSpace())
    cli.add_fields(p.add_argument_group("scheduling"), search.SweepOptions, search.SweepOptions())
    args = p.parse_args(argv)
    run, ray_opts = cli.build(RunOptions, args), cli.build(RayOptions, args)
    space, options = cli.build(search.SearchSpace, args), cli.build(search.SweepOptions, args)
    base, request = cli.config_from_args(args, {} if space.seeds else JOB_DEFAULTS)  # seeds: the train job's
    request = layout.for_autoscaling(request, run.wait_for_resources)
    workers = args.num_workers if isinstance(args.num_workers, int) else None  # None: the sweep's per-trial rule
    connection.check_address()  # a dead RAY_ADDRESS or stale address file: stop before writing anything
    run = replace(run, mlflow_uri=mlflow_store.check(run.mlflow_uri) or None)  # MLflow installed, store usable
    plan = search.preflight(base, space, options, run, workers=workers)
    with lease.holding([run.folder.path], [f"sweep {run.name}"]), stop.next_step(lambda: _resume_note(run)):
        if stop.installed():  # Tune's own SIGINT handler would replace the job's; the job asks Tune to stop
            os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        connection.connect(ray_opts.num_cpus, verbose=ray_opts.verbose, dashboard=True)
        if "use_gpu" in request.auto and not options.resume:  # a resumed sweep keeps its saved base
            plan = replace(plan, base=layout.gpu_if_any(plan.base))
        out = sweep.sweep(plan, run, emit=emit)
    emit(
        f"{out.trials_run} trials in {out.wall_s:.0f}s, {out.stopped_early} stopped early by ASHA; "
        f"best {out.best_trial}: val acc {out.best_val_acc:.2%}"
    )
    for label in ("trials", "plot", "best_config", "best_checkpoint"):
        emit(f"{label:>16}: {getattr(out, label)}")
    if out.mlflow_run_id:
        emit(f"{'mlflow':>16}: experiment {tracking.sweep_experiment(run.name)} in {run.mlflow_uri}")
    return 0 if math.isfinite(out.best_val_acc) else 1


def _resume_note(run: RunOptions) -> str:
    """What a stopped sweep does next: --resume continues it once its definition is saved."""
    if storage.exists(run.folder.sweep_spec):
        return "rerun with --resume to continue the sweep (finished trials are kept)"
    return "nothing was started: the same command starts the sweep"
