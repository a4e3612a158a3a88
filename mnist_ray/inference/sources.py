"""Which checkpoint a job scores, predicts with or exports: the three ways to name one, shared by those jobs' options.

``--checkpoint`` names a ``model.pt`` file or its folder, ``--run`` a training run or sweep (its best checkpoint),
``--models-dir`` a folder of runs (the newest finished one); with none, the newest run under the default folder.
The evaluation job takes several ``--checkpoint`` or ``--run`` to compare models; prediction and export take one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mnist_ray.errors import CheckpointError, ConfigError
from mnist_ray.files import folders, storage


@dataclass(frozen=True)
class CheckpointSource:
    """The checkpoint options of a job (a base class of its options); ``MANY``: whether it takes several."""

    MANY: ClassVar[bool] = False

    checkpoint: tuple[str, ...] = ()
    """A model.pt file or checkpoint folder (path or URI); the evaluation job takes several to compare models."""
    run: tuple[str, ...] = ()
    """A training run or sweep folder (path or URI): its best checkpoint; the evaluation job takes several."""
    models_dir: str | None = None
    """The newest finished run under this folder or URI (default: ~/mnist_ray/runs)."""

    def __post_init__(self) -> None:
        if sum(bool(x) for x in (self.checkpoint, self.run, self.models_dir)) > 1:
            also = " (repeat --checkpoint or --run to compare)" if self.MANY else ""
            raise ConfigError(f"pass only one of --checkpoint, --run and --models-dir{also}")
        if not self.MANY and len(self.checkpoint) + len(self.run) > 1:
            raise ConfigError("pass one --checkpoint or --run: this job uses one model (evaluate.py compares several)")

    def resolve(self) -> list[str]:
        """The checkpoint file of each --checkpoint and --run, in order (or the newest run's), each model once."""
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
