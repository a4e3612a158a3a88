"""Which checkpoint a job scores, predicts with or exports: the three ways to name one, shared by those jobs' options.

``--checkpoint`` names a ``model.pt`` file or its folder, ``--run`` a training run or sweep (its best checkpoint),
``--models-dir`` a folder of runs (the newest finished one); with none, the newest run under the default folder.
The evaluation job takes several ``--checkpoint`` or ``--run`` to compare models; prediction and export take one.
With ``--ensemble`` several models are one model, the mean of their probabilities, in every job that takes
checkpoints; ``--ensemble-top N`` takes a sweep's N best trials by validation accuracy (never the test set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mnist_ray.errors import CheckpointError, ConfigError
from mnist_ray.files import folders, storage
from mnist_ray.settings.rules import Interval
from mnist_ray.training import checkpoints


@dataclass(frozen=True)
class CheckpointSource:
    """The checkpoint options of a job (a base class of its options); ``MANY``: whether it takes several models."""

    MANY: ClassVar[bool] = False
    RANGES: ClassVar[dict[str, Interval]] = {"ensemble_top": (2, 1000, "[]")}

    checkpoint: tuple[str, ...] = ()
    """A model.pt file or checkpoint folder (path or URI); the evaluation job takes several to compare models."""
    run: tuple[str, ...] = ()
    """A training run or sweep folder (path or URI): its best checkpoint; the evaluation job takes several."""
    models_dir: str | None = None
    """The newest finished run under this folder or URI (default: ~/mnist_ray/runs)."""
    ensemble: bool = False
    """Use the --checkpoint/--run models as one: the mean of their probabilities (evaluate also reports each)."""
    ensemble_top: int | None = None
    """With one --run of a sweep: an ensemble of its N best trials by validation accuracy."""

    def __post_init__(self) -> None:
        if sum(bool(x) for x in (self.checkpoint, self.run, self.models_dir)) > 1:
            also = " (repeat --checkpoint or --run to compare)" if self.MANY else ""
            raise ConfigError(f"pass only one of --checkpoint, --run and --models-dir{also}")
        if self.ensemble_top is not None and (len(self.run) != 1 or self.checkpoint):
            raise ConfigError("--ensemble-top takes one --run: a sweep folder, whose best trials it uses")
        if not (self.MANY or self.is_ensemble) and len(self.checkpoint) + len(self.run) > 1:
            raise ConfigError(
                "pass one --checkpoint or --run, or add --ensemble: this job uses one model (evaluate.py compares "
                "several)"
            )
        if self.ensemble and self.ensemble_top is None and len(self.checkpoint) + len(self.run) < 2:
            raise ConfigError("--ensemble needs two or more models: repeat --checkpoint or --run")

    @property
    def is_ensemble(self) -> bool:
        """Whether the models are one ensemble."""
        return self.ensemble or self.ensemble_top is not None

    def resolve(self) -> list[str]:
        """The checkpoint file of each --checkpoint and --run, in order (or the newest run's, or a sweep's best
        trials), each model once."""
        if self.ensemble_top is not None:
            return sweep_top(self.run[0], self.ensemble_top)
        given = [("--checkpoint", c) for c in self.checkpoint] + [("--run", r) for r in self.run]
        if not given:
            return [resolve_checkpoint(models_dir=self.models_dir)]
        found = [resolve_checkpoint(**{flag.lstrip("-"): value}) for flag, value in given]
        for i, path in enumerate(found):
            if path in found[:i]:
                first = found.index(path)
                raise ConfigError(
                    f"{' '.join(given[first])} and {' '.join(given[i])} are the same checkpoint {path}: "
                    "a comparison needs different models"
                )
        return found


def resolve_checkpoint(checkpoint: str | None = None, run: str | None = None, models_dir: str | None = None) -> str:
    """The checkpoint file (path or URI): explicit, a run's or sweep's best, or the newest run's best."""
    if checkpoint:
        if storage.is_file(checkpoint):
            return storage.normalize(checkpoint)
        inside = storage.join(checkpoint, folders.CHECKPOINT_FILE)
        if storage.is_file(inside):
            return storage.normalize(inside)
        raise CheckpointError(
            f"checkpoint {checkpoint} does not exist: pass a {folders.CHECKPOINT_FILE} or a checkpoint folder"
        )
    if run:
        best = _best_of(storage.normalize(run))
        if not storage.is_file(best):
            raise CheckpointError(
                f"{run} has no {folders.RunFolder.best_checkpoint}: is it a finished training run or sweep folder?"
            )
        return best
    root = storage.normalize(models_dir or folders.DEFAULT_RUNS)
    found = [_best_of(storage.join(root, d)) for d in storage.list_dirs(root)]
    dated = [(storage.mtime(p), p) for p in found if storage.is_file(p)]
    if not dated:
        raise CheckpointError(
            f"no finished run (with {folders.RunFolder.best_checkpoint}) under {root}: train one, or pass --checkpoint"
        )
    return max(dated)[1]


def _best_of(run: str) -> str:
    """The best checkpoint of the run folder ``run``."""
    return folders.RunFolder(run, run).best_checkpoint


def load(members: Sequence[str], dataset: str | None = None) -> tuple[dict[str, Any], ...]:
    """Each checkpoint of ``members`` (one model, or an ensemble's) loaded and checked before Ray: weights that fit
    their architecture, the ``dataset`` when given, and one dataset for all."""
    states = tuple(checkpoints.load(m, dataset=dataset) for m in members)
    for state in states:
        checkpoints.build_model(state)  # weights that do not fit the architecture fail now, not in a Ray task
    odd = [(m, s["dataset"]) for m, s in zip(members, states, strict=True) if s["dataset"] != states[0]["dataset"]]
    if odd:
        raise ConfigError(
            f"{members[0]} ({states[0]['dataset']}) and {odd[0][0]} ({odd[0][1]}) are trained on different datasets: "
            "the members of one ensemble must share theirs"
        )
    return states


def sweep_top(sweep: str, n: int) -> list[str]:
    """The checkpoints of the ``n`` trials of ``sweep`` with the best validation accuracy (ties: by trial id)."""
    import pandas as pd

    table = folders.RunFolder(storage.normalize(sweep), storage.normalize(sweep)).trials
    if not storage.is_file(table):
        raise CheckpointError(f"{sweep} has no {folders.RunFolder.trials}: is it a finished sweep folder?")
    with storage.local_copy(table) as local:
        trials = pd.read_parquet(local).dropna(subset=["best_val_acc", "checkpoint_path"])
    if len(trials) < n:
        raise ConfigError(f"--ensemble-top {n}: sweep {sweep} has {len(trials)} finished trials with a checkpoint")
    best = trials.sort_values(["best_val_acc", "trial_id"], ascending=[False, True], kind="stable").head(n)
    return [resolve_checkpoint(checkpoint=path) for path in best["checkpoint_path"]]
