"""Ray Tune sweeps over learning rate, optimizer and model, running the train job's own loop.

Each trial is a Tune function trainable that builds the same ``TorchTrainer`` as the train job
(:func:`mnist_ray.training.trainer.make_trainer`) and reports through Ray Train's ``TuneReportCallback``;
``Tuner(trainer)`` is deprecated and not used. ASHA stops poor trials early on validation accuracy.
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from mnist_ray.cluster import stop
from mnist_ray.errors import ConfigError, ResourceError
from mnist_ray.files import storage
from mnist_ray.files.folders import RunFolder
from mnist_ray.ray_workarounds import loggers
from mnist_ray.ray_workarounds.placement_groups import PlacementGroupReaper, free_orphaned_placement_groups
from mnist_ray.reports import sweep_report, tracking
from mnist_ray.settings.config import RunOptions, TrainConfig
from mnist_ray.training import checkpoints, progress, search, trainer

log = logging.getLogger(__name__)
METRIC = "val_acc"
TRIAL_DRIVER_MEMORY = 256 * 1024**2


@dataclass(frozen=True)
class SweepResult:
    """What a finished sweep wrote (paths or URIs) and its headline figures."""

    trials: str
    plot: str
    best_config: str
    best_checkpoint: str
    best_trial: str
    best_val_acc: float
    wall_s: float
    trials_run: int
    stopped_early: int
    mlflow_run_id: str | None = None


def fit_layout(
    base: TrainConfig,
    trials: int,
    workers: int | None,
    max_concurrent: int = 0,
    batch_sizes: tuple[int, ...] = (),
    wait: bool = False,
) -> tuple[TrainConfig, int]:
    """Per-trial workers and trial concurrency that fit this cluster, so no trial pends forever."""
    if wait:  # autoscaling cluster: trust the requested layout, let the autoscaler add nodes
        return base.with_updates(num_workers=workers or base.num_workers), max_concurrent or trials
    total = ray.cluster_resources()
    unit = "GPU" if base.use_gpu else "CPU"
    per_worker = base.gpus_per_worker if base.use_gpu else base.cpus_per_worker
    slots = int(total.get(unit, 0) // per_worker)  # workers the cluster can run at once
    if slots < 1:
        raise ResourceError(f"the cluster has {total.get(unit, 0):g} {unit}s; one worker needs {per_worker:g}")
    if workers is None:  # spread the cluster over the trials, at least one worker each
        workers = max(1, slots // trials)
    if workers > slots:
        raise ResourceError(
            f"{workers} workers per trial need {workers * per_worker:g} {unit}s but the cluster has "
            f"{total.get(unit, 0):g}: use --num-workers {slots} or fewer"
        )
    for size in (base.batch_size, *batch_sizes):
        if size % workers or size % base.num_workers:
            raise ConfigError(
                f"batch size {size} must be a multiple of the {workers} worker(s) per trial and of --num-workers "
                f"{base.num_workers} (used by {RunFolder.best_config}): pass --batch-size/--batch-sizes"
            )
    cfg = base.with_updates(num_workers=workers)
    trainer.check_fits(cfg)
    concurrency = min(trials, slots // workers)
    return cfg, min(concurrency, max_concurrent) if max_concurrent else concurrency


def run_trial(config: dict[str, Any], data_refs: dict[str, tuple], trial_root: str, max_failures: int) -> None:
    """Tune function trainable: one Ray Train run of the shared loop, named after the trial, under ``trial_root``."""
    cfg = TrainConfig.from_dict(config)
    opts = RunOptions(
        name=tune.get_context().get_trial_id(), storage_path=trial_root, keep_checkpoints=1, max_failures=max_failures
    )
    if _report_if_finished(cfg, opts.folder):
        return
    # Each report reaches Tune from this thread, through the function trainable's own handshake. Ray Train's
    # TuneReportCallback hands reports over through a second queue that Tune 2.60's step() drains into a result
    # queue of size 1: when this function returned before step() took the last report, Tune's closing result
    # filled that queue first and step() blocked forever (the sweep hung; tests/test_tuning.py reproduces it).
    make = functools.partial(trainer.make_trainer, cfg, opts, data_refs)
    result = progress.fit_with_progress(lambda cbs: make(callbacks=cbs), tune.report, max_failures, in_step=True)
    if result.error:
        raise result.error


def _report_if_finished(cfg: TrainConfig, trial: RunFolder) -> bool:
    """A resumed sweep's trial whose Train run finished as the sweep was stopped: report its last epoch to Tune.

    Its Train run would resume complete and report nothing, and Tune would fail the trial for lacking the metric.
    """
    done = checkpoints.last_epoch(trial)
    if done < cfg.epochs:
        return False
    latest = trial.epoch_checkpoint(done)
    metrics = checkpoints.load(latest)["history"][-1]
    tune.report({**metrics, CHECKPOINT_PATH_KEY: storage.filesystem(latest)[1]})
    return True


class _TrialLog(tune.Callback):
    """Logs one line per finished trial: id, parameters, accuracy and the running best.

    Tune pickles its callbacks and Ray Train replaces ``builtins.print`` on the driver, so this logs
    through the module's logger (the jobs send it to stdout) instead of holding a print function.
    """

    def __init__(self, params: list[str], epochs: int) -> None:
        self.params, self.epochs, self.best, self.done = params, epochs, -math.inf, 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        acc = result.get(METRIC, math.nan)
        self.best = max(self.best, acc)
        self.done += 1
        params = ", ".join(f"{k}={_fmt(trial.config[k])}" for k in self.params)
        epochs = result.get("epoch", 0)
        stopped = "  (stopped early by ASHA)" if epochs < self.epochs else ""
        log.info(
            f"trial {self.done:>2} {trial.trial_id}: {params}  epochs {epochs}  "
            f"val acc {acc:.2%}  best so far {self.best:.2%}{stopped}"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        log.warning(f"trial {trial.trial_id} failed: {trial.error_file}")


def _fmt(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def samples(space: search.SearchSpace, options: search.SweepOptions) -> int:
    """Tune's samples of the space: --num-samples, or one of each seed (the seeds are a grid)."""
    return 1 if space.seeds else options.num_samples


def make_tuner(
    cfg: TrainConfig,
    space: search.SearchSpace,
    sweep_opts: search.SweepOptions,
    run: RunOptions,
    concurrency: int,
    refs,
    callbacks: tuple[tune.Callback, ...] = (),
) -> tune.Tuner:
    """A Tuner over ``space`` whose trials run :func:`run_trial` (fresh, or restored with --resume).

    ``callbacks``: more Tune callbacks on the driver, after the sweep's own (its trial log, MLflow).
    """
    trainable = tune.with_parameters(
        run_trial, data_refs=refs, trial_root=run.folder.trial_runs, max_failures=run.max_failures
    )
    # The trial only drives its TorchTrainer (whose workers reserve the CPUs/GPUs): reserve memory, no CPU,
    # so a 2-CPU machine runs two 1-worker trials at once. Ray rejects an all-zero request.
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    path = run.folder.checkpoints
    if sweep_opts.resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"sweep {path} has no saved Tune state to resume: start a new sweep with another --name")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in space.param_space}
    scheduler = (
        FIFOScheduler()
        if space.seeds
        else ASHAScheduler(  # seeds: every member trained to the end
            time_attr="epoch",
            max_t=cfg.epochs,
            grace_period=min(sweep_opts.grace_period, cfg.epochs),
            reduction_factor=sweep_opts.reduction_factor,
        )
    )
    return tune.Tuner(
        trainable,
        param_space={**fixed, **space.param_space},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=samples(space, sweep_opts),
            scheduler=scheduler,
            max_concurrent_trials=concurrency,
            reuse_actors=sweep_opts.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=run.name,
            storage_path=run.folder.storage_root,
            verbose=0,
            callbacks=[
                _TrialLog(list(space.param_space), cfg.epochs),
                *tracking.tune_callbacks(run.mlflow_uri, run.name),
                *callbacks,
            ],
        ),
    )


def sweep(
    sp: search.SweepPlan, run: RunOptions, emit=log.info, callbacks: tuple[tune.Callback, ...] = ()
) -> SweepResult:
    """Run (or resume) a sweep and write trials.parquet, tune.png, best.json and the best checkpoint.

    ``callbacks``: more Tune callbacks on the driver (see :func:`make_tuner`).
    """
    trainer.check_storage(run)
    space, options = sp.space, sp.options
    trials = samples(space, options) * space.trials
    cfg, concurrency = fit_layout(
        sp.base, trials, sp.workers, options.max_concurrent, space.batch_sizes, run.wait_for_resources
    )
    emit(
        f"sweep {run.name}: {trials} trials, {concurrency} at a time, {cfg.num_workers} worker(s) x "
        f"{cfg.cpus_per_worker} CPU each, {cfg.epochs} epochs, "
        + (f"seeds 0-{space.seeds - 1}, every trial to the end" if space.seeds else f"ASHA on {METRIC}")
    )
    start = time.perf_counter()
    tuner = make_tuner(cfg, space, options, run, concurrency, trainer.put_data(cfg, sp.arrays), callbacks)
    if not options.resume:
        search.save_spec(sp, run)
    with PlacementGroupReaper(on_free=_say_freed), stop.graceful(_interrupt_tune):
        grid = tuner.fit()
    stop.check()  # a stop signal ended the sweep early: Tune saved its state; nothing is reported
    ended = time.perf_counter()
    wall_s = ended - start
    _say_freed(free_orphaned_placement_groups())
    log.debug("post-sweep placement-group check: %.1f s", time.perf_counter() - ended)
    report = sweep_report.write(grid, run.folder, list(space.param_space), cfg, wall_s, emit)
    out = SweepResult(**report)
    return replace(out, mlflow_run_id=tracking.log_sweep(run, out))  # with --mlflow-uri: reports, best checkpoint


def _interrupt_tune(signum: int) -> None:
    """Ask the running ``tuner.fit()`` to stop as Ctrl-C would: Tune saves the sweep's state, then returns.

    Tune handles SIGUSR1 that way in the main thread (SIGINT too, unless ``TUNE_DISABLE_SIGINT_HANDLER``).
    """
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        loggers.quiet_tune_restore_advice()
        handler(signum, None)
    else:
        raise stop.Stopped(signum)


def _say_freed(n: int) -> None:
    if n:
        log.warning("freed %d placement group(s) that stopped trials left holding CPUs (a Ray Train race)", n)
