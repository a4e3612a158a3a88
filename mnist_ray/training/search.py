"""What a sweep is before it runs: its search space and options, checked, and its definition saved for --resume.

A new sweep writes its definition (base config, space, workers, options) into its folder before it starts; a
resumed one reads that back instead of its flags, so changed flags cannot corrupt a sweep.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ray import tune

from mnist_ray import data
from mnist_ray.data import TRAIN_IMAGES
from mnist_ray.errors import ConfigError
from mnist_ray.files import capacity, storage
from mnist_ray.settings.config import RunOptions, TrainConfig
from mnist_ray.settings.rules import Interval, parse_json_object, validate_fields
from mnist_ray.training import optim

SWEEP_EPOCHS = 3
"""Epochs per trial unless a preset, --config or --epochs says otherwise: sweeps compare short runs."""


@dataclass(frozen=True)
class SearchSpace:
    """What a sweep samples; each trial's config is the base config with these fields replaced."""

    RANGES: ClassVar[dict[str, Interval]] = {
        "lr_min": (0, math.inf, "()"),
        "lr_max": (0, math.inf, "()"),
        "lr_values": (0, math.inf, "()"),
        "batch_sizes": (1, TRAIN_IMAGES, "[]"),
        "weight_decay_range": (0, math.inf, "()"),
        "seeds": (0, 1000, "[]"),
    }

    lr_min: float = 1e-4
    """Lower end of the log-uniform learning-rate range."""
    lr_max: float = 1e-1
    """Upper end of the log-uniform learning-rate range."""
    lr_values: tuple[float, ...] = ()
    """Grid over these learning rates instead of sampling (each tried --num-samples times)."""
    optimizers: tuple[str, ...] = tuple(optim.OPTIMIZERS)
    """Optimizers sampled uniformly."""
    models: tuple[str, ...] = ("cnn",)
    """Models sampled uniformly."""
    batch_sizes: tuple[int, ...] = ()
    """Global batch sizes to sample from (none: keep the base config's)."""
    weight_decay_range: tuple[float, float] | None = None
    """Log-uniform weight-decay range MIN MAX (none: keep the base config's)."""
    seeds: int = 0
    """Instead of searching: train the recipe (preset, --config, flags) with seeds 0..N-1, one trial each, every one
    to the end (ASHA off; epochs default to the train job's): the members of an ensemble."""

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.seeds and (self.lr_values or self.batch_sizes or self.weight_decay_range):
            raise ConfigError("--seeds trains one recipe: drop --lr-values, --batch-sizes and --weight-decay-range")
        if self.lr_min > self.lr_max or (
            self.weight_decay_range and self.weight_decay_range[0] > self.weight_decay_range[1]
        ):
            raise ConfigError("a range's minimum must not exceed its maximum (--lr-min/--lr-max, --weight-decay-range)")
        for name in ("optimizers", "models"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} needs at least one value")

    @functools.cached_property
    def param_space(self) -> dict[str, Any]:
        """The Tune search space over TrainConfig field names (built once)."""
        if self.seeds:
            return {"seed": tune.grid_search(list(range(self.seeds)))}
        lr = tune.grid_search(list(self.lr_values)) if self.lr_values else tune.loguniform(self.lr_min, self.lr_max)
        space: dict[str, Any] = {
            "lr": lr,
            "optimizer": tune.choice(list(self.optimizers)),
            "model": tune.choice(list(self.models)),
        }
        if self.batch_sizes:
            space["batch_size"] = tune.choice(list(self.batch_sizes))
        if self.weight_decay_range:
            space["weight_decay"] = tune.loguniform(*self.weight_decay_range)
        return space

    @property
    def trials(self) -> int:
        """Grid points per sample (1 unless --lr-values or --seeds)."""
        return self.seeds or max(len(self.lr_values), 1)


@dataclass(frozen=True)
class SweepOptions:
    """How many trials, how ASHA prunes them, and whether to continue an interrupted sweep."""

    RANGES: ClassVar[dict[str, Interval]] = {
        "num_samples": (1, 100_000, "[]"),
        "grace_period": (1, 10_000, "[]"),
        "reduction_factor": (1, math.inf, "()"),
        "max_concurrent": (0, 100_000, "[]"),
    }

    num_samples: int = 8
    """Trials to run (per --lr-values entry when gridding)."""
    grace_period: int = 1
    """ASHA: epochs a trial runs before it may be stopped."""
    reduction_factor: float = 2.0
    """ASHA: keep 1/factor of the trials at each rung (> 1)."""
    max_concurrent: int = 0
    """Trials at once (0 = as many as the cluster fits)."""
    resume: bool = False
    """Continue the interrupted sweep --name from its saved definition (search flags are ignored)."""
    reuse_actors: bool = False
    """Run the next trial in a finished trial's process (Tune's reuse_actors), skipping its start and imports.

    Off by default, as in Ray: it makes a sweep faster, but an 8-trial sweep with it stalled (bench/NOTES.md).
    """

    def __post_init__(self) -> None:
        validate_fields(self)


def check_new_or_resumable(run: RunOptions, resume: bool) -> None:
    """A new sweep needs a free name; --resume needs a sweep to continue (checked before Ray starts)."""
    spec = run.folder.sweep_spec
    if resume and not storage.is_file(spec):
        raise ConfigError(f"no sweep to resume: {spec} does not exist; drop --resume to start one")
    if not resume and storage.exists(spec):
        raise ConfigError(f"sweep {run.folder.path} exists: pass --resume to continue it, or a new --name")


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's definition after the checks that need no Ray, with its data parsed and verified."""

    base: TrainConfig
    space: SearchSpace
    options: SweepOptions
    workers: int | None
    """Workers per trial; None derives it from the cluster."""
    arrays: data.Arrays


def preflight(
    base: TrainConfig, space: SearchSpace, options: SweepOptions, run: RunOptions, workers: int | None = None
) -> SweepPlan:
    """Check the name, load a resumed sweep's saved definition (sweep.json), parse the data, probe the output.

    With ``resume`` the saved base config, space, workers and options replace the arguments, so changed
    flags cannot corrupt a sweep.
    """
    check_new_or_resumable(run, options.resume)
    if options.resume:
        base, space, workers, options = load_spec(run.folder.sweep_spec)
    arrays = data.load(base.dataset, run.data_dir)
    capacity.check_writable(run.output, "--output")
    return SweepPlan(base, space, options, workers, arrays)


def load_spec(path: str) -> tuple[TrainConfig, SearchSpace, int | None, SweepOptions]:
    """The base config, search space, workers and sweep options a sweep was started with (sweep.json)."""
    try:
        spec = parse_json_object(storage.read_text(path), str(path))
        space = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["space"].items()})
        saved = SweepOptions(**{**spec.get("sweep", {}), "resume": True})
        return TrainConfig.from_dict(spec["base"]), space, spec["workers"], saved
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is damaged ({exc!r}): start a new sweep with another --name") from None


def save_spec(plan: SweepPlan, run: RunOptions) -> None:
    """Write a new sweep's definition into its folder, for --resume."""
    spec = {
        "base": plan.base.to_dict(),
        "space": asdict(plan.space),
        "workers": plan.workers,
        "sweep": asdict(plan.options),
    }
    storage.write_text(run.folder.sweep_spec, json.dumps(spec, indent=2) + "\n")
