"""Train the MNIST CNN or ANN with Ray Train, data-parallel over CPU or GPU workers.

Runs on the Ray the environment names (RAY_ADDRESS, ray job submit, a head started by `ray start`
on this machine) or else starts a local one. Re-running with the same --name resumes from the last
checkpoint. Writes <output>/<name>/{history.parquet, curves.png, config.json, best_checkpoint/model.pt};
--output may be a folder or an s3:// URI.
"""

from __future__ import annotations

import functools
import resource
from dataclasses import dataclass, replace

from mnist_ray import data
from mnist_ray.cluster import connection, layout, stop
from mnist_ray.files import capacity, folders, lease
from mnist_ray.files.folders import ReportFolder
from mnist_ray.inference import evaluation
from mnist_ray.reports import mlflow_store, tracking
from mnist_ray.settings import cli
from mnist_ray.settings.config import RayOptions, RunOptions, TrainConfig
from mnist_ray.settings.rules import check_name
from mnist_ray.training import checkpoints, trainer

emit = functools.partial(print, flush=True)


@dataclass(frozen=True)
class AfterTraining:
    """What the train job does once training has finished."""

    evaluate: bool = False
    """Then evaluate the best checkpoint on the test set (Ray Data batch inference)."""
    reports: str = folders.DEFAULT_REPORTS
    """Reports folder or URI for --evaluate: <reports>/<name>-<UTC time>/."""


@dataclass(frozen=True)
class Settings:
    """The train job's typed settings, and the layout fields it leaves to the cluster."""

    cfg: TrainConfig
    layout: layout.Request
    opts: RunOptions
    after: AfterTraining
    ray: RayOptions


def parse(argv: list[str] | None = None) -> Settings:
    """The job's typed settings from its command line (validated; nothing is read or written)."""
    p = cli.parser(__doc__)
    cli.add_config_flags(p)
    cli.add_run_flags(p, RunOptions())
    cli.add_fields(p.add_argument_group("after training"), AfterTraining, AfterTraining())
    args = p.parse_args(argv)
    cfg, request = cli.config_from_args(args)
    opts = cli.build(RunOptions, args)
    request = layout.for_autoscaling(request, opts.wait_for_resources)
    return Settings(cfg, request, opts, cli.build(AfterTraining, args), cli.build(RayOptions, args))


def main(argv: list[str] | None = None) -> int:
    """Parse flags, check everything that needs no Ray, connect, train, print where the outputs are."""
    settings = parse(argv)
    opts, after = settings.opts, settings.after
    connection.check_address()  # a dead RAY_ADDRESS or stale address file: stop before writing anything
    opts = replace(opts, mlflow_uri=mlflow_store.check(opts.mlflow_uri) or None)  # MLflow installed, store usable
    report_id = f"{opts.name}-{folders.new_id()}"
    # A resumed run keeps the layout it started with; a new one decides its auto fields once Ray is up.
    cfg, request = layout.adopt(settings.cfg, settings.layout, trainer.previous_config(opts.folder))
    arrays = trainer.preflight(cfg, opts)  # resume check, data files verified, output writable: before Ray
    if after.evaluate:
        check_name("report id", report_id)
        capacity.check_writable(after.reports, "--reports")
    with lease.holding([opts.folder.path], [f"run {opts.name}"]), stop.next_step(lambda: resume_note(opts)):
        return _train(replace(settings, cfg=cfg, layout=request, opts=opts), arrays, report_id)


def resume_note(opts: RunOptions) -> str:
    """What a stopped run does next: the epoch the same command resumes from (after the last complete checkpoint)."""
    done = checkpoints.last_epoch(opts.folder)
    return f"the same command resumes from epoch {done + 1}" + (f" (checkpoint of epoch {done} kept)" if done else "")


def _train(settings: Settings, arrays: data.Arrays, report_id: str) -> int:
    """Once the run's lease is held: connect, decide the auto layout, train, write the outputs, optionally evaluate."""
    opts, after, ray_opts = settings.opts, settings.after, settings.ray
    connection.connect(ray_opts.num_cpus, verbose=ray_opts.verbose, dashboard=ray_opts.dashboard)
    cfg, chosen = layout.resolve(settings.cfg, settings.layout)
    if chosen:
        emit(chosen)
    emit(headline(cfg, opts))
    out = trainer.train(cfg, opts, trainer.progress_printer(cfg, emit), arrays)
    print_outputs(out)
    if out.mlflow_run_id:
        emit(f"{'mlflow run':>16}: {out.mlflow_run_id} in {opts.mlflow_uri}")
    if after.evaluate:
        use_gpu, actors, _ = layout.inference(layout.AUTO, layout.AUTO)
        folder, m = evaluation.evaluate_to_report(
            out.best_checkpoint,
            after.reports,
            report_id,
            data_dir=opts.data_dir,
            use_gpu=use_gpu,
            actors=actors,
            progress=ray_opts.verbose,
        )
        emit(f"test accuracy {m['accuracy']:.2%}, test loss {m['loss']:.4f} ({m['n']} images)")
        emit(f"{'test report':>16}: {ReportFolder(folder).summary}")
        tracking.log_evaluation(opts.mlflow_uri, folder, m)  # into the run's MLflow run
    return 0


def headline(cfg: TrainConfig, opts: RunOptions) -> str:
    """One line saying what is about to be trained, where."""
    gpu = f" + {cfg.gpus_per_worker:g} GPU" if cfg.use_gpu else ""
    return (
        f"training {cfg.model} on {cfg.dataset}: {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU{gpu}, "
        f"{cfg.epochs} epochs, run {opts.name} in {opts.folder.path}"
    )


def print_outputs(out: trainer.TrainOutputs) -> None:
    """The best epoch, peak memory, and one line per output file."""
    m = out.best_metrics
    driver_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(
        f"best epoch {m['epoch']}: val acc {m['val_acc']:.2%}, val loss {m['val_loss']:.4f}; "
        f"peak RSS: driver {driver_mb:.0f} MB, worker {m.get('worker_max_rss_mb', float('nan')):.0f} MB"
    )
    for label, path in [
        ("history", out.history),
        ("curves", out.curves),
        ("config", out.config),
        ("best checkpoint", out.best_checkpoint),
    ]:
        emit(f"{label:>16}: {path}")
