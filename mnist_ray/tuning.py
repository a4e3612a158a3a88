"""Ray Tune sweeps over learning rate, optimizer and model, running the train job's own loop.

Each trial is a Tune function trainable that builds the same ``TorchTrainer`` as the train job
(:func:`mnist_ray.runner.make_trainer`) and reports through Ray Train's ``TuneReportCallback``;
``Tuner(trainer)`` is deprecated and not used. ASHA stops poor trials early on validation accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from mnist_ray import atomic, runner, sweep_report
from mnist_ray.config import MODELS, OPTIMIZERS, RunOptions, TrainConfig
from mnist_ray.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)
METRIC = "val_acc"
SPEC = "sweep.json"
TRIAL_DRIVER_MEMORY = 256 * 1024**2


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep samples; each trial's config is the base config with these fields replaced."""

    lr_min: float = 1e-4
    """Lower end of the log-uniform learning-rate range."""
    lr_max: float = 1e-1
    """Upper end of the log-uniform learning-rate range."""
    lr_values: tuple[float, ...] = ()
    """Explicit learning rates to grid over instead of sampling (each tried num_samples times)."""
    optimizers: tuple[str, ...] = OPTIMIZERS
    """Optimizers sampled uniformly."""
    models: tuple[str, ...] = ("cnn",)
    """Models sampled uniformly."""
    batch_sizes: tuple[int, ...] = ()
    """Global batch sizes to sample from (empty: keep the base config's)."""
    weight_decay: tuple[float, float] | None = None
    """Log-uniform weight-decay range (None: keep the base config's)."""

    def __post_init__(self) -> None:
        if not 0 < self.lr_min <= self.lr_max:
            raise ConfigError(f"learning-rate range [{self.lr_min}, {self.lr_max}] must satisfy 0 < min <= max")
        if any(lr <= 0 for lr in self.lr_values):
            raise ConfigError("--lr-values must all be positive")
        for name, values, valid in (("optimizer", self.optimizers, OPTIMIZERS), ("model", self.models, MODELS)):
            bad = sorted(set(values) - set(valid))
            if bad or not values:
                raise ConfigError(f"unknown or empty {name} choice {bad}; valid: {', '.join(valid)}")
        if self.weight_decay and not 0 < self.weight_decay[0] <= self.weight_decay[1]:
            raise ConfigError("weight-decay range must satisfy 0 < min <= max")

    def param_space(self) -> dict[str, Any]:
        """The Tune search space over TrainConfig field names."""
        space: dict[str, Any] = {
            "lr": tune.grid_search(list(self.lr_values))
            if self.lr_values
            else tune.loguniform(self.lr_min, self.lr_max),
            "optimizer": tune.choice(list(self.optimizers)),
            "model": tune.choice(list(self.models)),
        }
        if self.batch_sizes:
            space["batch_size"] = tune.choice(list(self.batch_sizes))
        if self.weight_decay:
            space["weight_decay"] = tune.loguniform(*self.weight_decay)
        return space


@dataclass(frozen=True)
class SweepOptions:
    """How many trials, how ASHA prunes them, and where the sweep lives."""

    num_samples: int = 8
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent: int = 0
    """Trials at once; 0 = as many as the cluster fits."""
    run: RunOptions = field(default_factory=lambda: RunOptions(name="sweep"))
    resume: bool = False

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor <= 1 or self.max_concurrent < 0:
            raise ConfigError(
                "need --num-samples >= 1, --grace-period >= 1, --reduction-factor > 1, --max-concurrent >= 0"
            )


def plan(
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
    per_worker = 1 if base.use_gpu else base.cpus_per_worker
    slots = int(total.get(unit, 0) // per_worker)  # workers the cluster can run at once
    if slots < 1:
        raise ResourceError(f"the cluster has {total.get(unit, 0):g} {unit}s; one worker needs {per_worker}")
    if workers is None:  # spread the cluster over the trials, at least one worker each
        workers = max(1, slots // trials)
    if workers > slots:
        raise ResourceError(
            f"{workers} workers per trial need {workers * per_worker} {unit}s but the cluster has "
            f"{total.get(unit, 0):g}: use --num-workers {slots} or fewer"
        )
    batch = base.batch_size - base.batch_size % workers or workers
    cfg = base.with_updates(num_workers=workers, batch_size=batch)
    for size in batch_sizes:
        if size < workers or size % workers or size % base.num_workers:
            raise ConfigError(
                f"--batch-sizes {size} must be a multiple of the {workers} worker(s) per trial "
                f"and of --num-workers {base.num_workers} (used by best.json)"
            )
    runner.check_fits(cfg)
    concurrency = min(trials, slots // workers)
    return cfg, min(concurrency, max_concurrent) if max_concurrent else concurrency


def run_trial(config: dict[str, Any], data_refs: dict[str, tuple], storage: str, max_failures: int) -> None:
    """Tune function trainable: one Ray Train run of the shared loop, named after the trial."""
    cfg = TrainConfig.from_dict(config)
    trial = tune.get_context().get_trial_id()
    opts = RunOptions(name=trial, storage_path=storage, keep_checkpoints=1, max_failures=max_failures)
    result = runner.make_trainer(cfg, opts, data_refs, callbacks=[TuneReportCallback()]).fit()
    if result.error:
        raise result.error


class _TrialLog(tune.Callback):
    """Prints one line per finished trial: id, parameters, accuracy and the running best."""

    def __init__(self, params: list[str], epochs: int, emit) -> None:
        self.params, self.epochs, self.emit, self.best, self.done = params, epochs, emit, -math.inf, 0

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        acc = result.get(METRIC, math.nan)
        self.best = max(self.best, acc)
        self.done += 1
        params = ", ".join(f"{k}={_fmt(trial.config[k])}" for k in self.params)
        epochs = result.get("epoch", 0)
        stopped = "  (stopped early by ASHA)" if epochs < self.epochs else ""
        self.emit(
            f"trial {self.done:>2} {trial.trial_id}: {params}  epochs {epochs}  "
            f"val acc {acc:.2%}  best so far {self.best:.2%}{stopped}"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.emit(f"trial {trial.trial_id} failed: {trial.error_file}")


def _fmt(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def make_tuner(base: TrainConfig, space: SearchSpace, opts: SweepOptions, concurrency: int, emit) -> tune.Tuner:
    """A Tuner over ``space`` whose trials run :func:`run_trial` (fresh, or restored with --resume)."""
    refs = runner.put_data(base, opts.run.data_dir)
    storage = opts.run.storage
    trainable = tune.with_parameters(
        run_trial, data_refs=refs, storage=f"{storage}/{opts.run.name}/train", max_failures=opts.run.max_failures
    )
    # The trial only drives its TorchTrainer (whose workers reserve the CPUs/GPUs): reserve memory, no CPU,
    # so a 2-CPU machine runs two 1-worker trials at once. Ray rejects an all-zero request.
    trainable = tune.with_resources(trainable, {"CPU": 0, "memory": TRIAL_DRIVER_MEMORY})
    path = f"{storage}/{opts.run.name}"
    if opts.resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError(f"no sweep to resume at {path}: drop --resume to start one")
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    if tune.Tuner.can_restore(path):
        raise ConfigError(f"sweep {path} exists: pass --resume to continue it, or a new --name")
    fixed = {k: v for k, v in base.to_dict().items() if k not in space.param_space()}
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=base.epochs,
        grace_period=min(opts.grace_period, base.epochs),
        reduction_factor=opts.reduction_factor,
    )
    return tune.Tuner(
        trainable,
        param_space={**fixed, **space.param_space()},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=opts.num_samples,
            scheduler=scheduler,
            max_concurrent_trials=concurrency,
        ),
        run_config=tune.RunConfig(
            name=opts.run.name,
            storage_path=storage,
            verbose=0,
            callbacks=[_TrialLog(list(space.param_space()), base.epochs, emit)],
        ),
    )


def sweep(
    base: TrainConfig, space: SearchSpace, opts: SweepOptions, workers: int | None = None, emit=log.info
) -> dict[str, Path]:
    """Run (or resume) a sweep and write trials.parquet, tune.png, best.json and the best checkpoint."""
    out = Path(opts.run.output).expanduser().resolve() / opts.run.name
    if opts.resume:  # the sweep's own definition, not today's flags
        base, space, workers = load_spec(out / SPEC)
    trials = opts.num_samples * max(len(space.lr_values), 1)
    runner.check_storage(opts.run)
    cfg, concurrency = plan(base, trials, workers, opts.max_concurrent, space.batch_sizes, opts.run.wait_for_resources)
    emit(
        f"sweep {opts.run.name}: {trials} trials, {concurrency} at a time, {cfg.num_workers} worker(s) x "
        f"{cfg.cpus_per_worker} CPU each, {cfg.epochs} epochs, ASHA on {METRIC}"
    )
    start = time.perf_counter()
    tuner = make_tuner(cfg, space, opts, concurrency, emit)
    if not opts.resume:
        atomic.write_json(out / SPEC, {"base": base.to_dict(), "space": asdict(space), "workers": workers})
    grid = tuner.fit()
    params = list(space.param_space())
    return sweep_report.write(grid, out, params, base, time.perf_counter() - start, opts.run.storage)


def load_spec(path: Path) -> tuple[TrainConfig, SearchSpace, int | None]:
    """The base config, search space and workers a sweep was started with (saved as sweep.json)."""
    if not path.is_file():
        raise ConfigError(f"no sweep to resume: {path} does not exist; drop --resume to start one")
    spec = json.loads(path.read_text())
    space = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["space"].items()}
    return TrainConfig.from_dict(spec["base"]), SearchSpace(**space), spec["workers"]
