"""Checkpoint format: one ``model.pt`` holding weights, optimizer state, config and history.

Everything in it is tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``: a checkpoint can never run code on load. The config
travels with the weights, so a model is rebuilt from its checkpoint alone; so does the input
normalisation it was trained with, so it is scored with the same statistics.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mnist_ray import data
from mnist_ray.errors import CheckpointError
from mnist_ray.files import storage
from mnist_ray.files.folders import CHECKPOINT_FILE, RunFolder, checkpoint_epochs
from mnist_ray.training import models

if TYPE_CHECKING:  # config imports this module's neighbours; only the annotation needs it
    from mnist_ray.settings.config import TrainConfig

FORMAT = 1
LEGACY_NORMALIZATION = data.Normalization(0.1307, 0.3081)
"""What checkpoints that predate the ``normalization`` entry were trained with: MNIST's figures, for
both datasets (the loop used them for Fashion-MNIST too), so that is what they are scored with."""


def estimate_bytes(cfg: TrainConfig) -> int:
    """About how large one checkpoint of ``cfg``'s model is: weights plus the optimizer's two state tensors each,
    and the trained weights beside their moving average with ``cfg.ema``."""
    net = models.build(cfg.model, cfg.dropout, seed=cfg.seed)
    return (4 if cfg.ema else 3) * sum(p.numel() * p.element_size() for p in net.parameters()) + 64_000


def last_epoch(run: RunFolder) -> int:
    """The epoch of the newest checkpoint Ray Train has recorded as complete for ``run`` (0 if none).

    Ray Train lists a checkpoint in its manager snapshot only once it is fully persisted, so a checkpoint cut
    short (a stop signal, a full disk) is never the one counted here, nor the one a resume starts from.
    """
    snapshot = run.checkpoint_snapshot
    try:
        text = storage.read_text(snapshot) if storage.is_file(snapshot) else ""
    except storage.StorageError:
        return 0
    return max(checkpoint_epochs(text), default=0)


def save(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    config: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
    normalization: data.Normalization | None = None,
    trained: nn.Module | None = None,
) -> Path:
    """Write ``model.pt`` into ``directory`` (temp name, then rename) and return its path.

    ``model`` is what evaluation, prediction and export load. ``trained``: the weights the optimizer trains when
    they are not ``model`` (``model`` is their moving average), kept so that a resumed run continues them.
    ``normalization``: the statistics the model was trained with (default: its dataset's own).
    """
    path = Path(directory) / CHECKPOINT_FILE
    stats = normalization or data.DATASET_INFO[config["dataset"]].normalization
    state = {
        "format": FORMAT,
        "model": config["model"],
        "dataset": config["dataset"],
        "normalization": {"mean": float(stats.mean), "std": float(stats.std)},
        "config": config,
        "epoch": epoch,
        "history": history,
        "state_dict": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    if trained is not None:
        state["trained_state_dict"] = _unwrap(trained).state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path, model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file, or a folder holding ``model.pt``, from a path or URI (``weights_only=True``).

    ``model`` / ``dataset``, when given, must match what the checkpoint was trained on.
    """
    file = str(path)
    if not storage.is_file(file) and storage.is_file(storage.join(file, CHECKPOINT_FILE)):
        file = storage.join(file, CHECKPOINT_FILE)  # a checkpoint folder
    if not storage.is_file(file):
        raise CheckpointError(
            f"checkpoint {file} does not exist or is not a file: pass a {CHECKPOINT_FILE} or its folder"
        )
    with storage.local_copy(file) as local:
        state = _read(local, file)
    _check_layout(state, file)
    for key, want in (("model", model), ("dataset", dataset)):
        if want is not None and state[key] != want:
            raise CheckpointError(f"checkpoint {file} is a {key} {state[key]!r}, not {want!r}")
    return state


def _read(local: Path, name: str) -> Any:
    """torch.load with weights only; every way a file can fail to be a checkpoint is one CheckpointError."""
    if local.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {name} is empty (0 bytes): pass a complete {CHECKPOINT_FILE}")
    if not zipfile.is_zipfile(local):
        raise CheckpointError(f"checkpoint {name} is corrupt or truncated (not a complete torch zip archive)")
    try:
        return torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"checkpoint {name} holds objects other than weights; refusing to load it ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {name} is corrupt or truncated: {str(exc).splitlines()[0][:200]}") from None


def _check_layout(state: Any, name: str) -> None:
    """The keys and types :func:`save` writes; a file that loads but lacks them is not our checkpoint."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{name} is not an mnist_ray checkpoint (format {FORMAT})")
    from mnist_ray.settings.rules import CHOICES

    kinds = {"model": str, "dataset": str, "config": dict, "epoch": int, "history": list, "state_dict": dict}
    bad = sorted(key for key, kind in kinds.items() if not isinstance(state.get(key), kind))
    if bad:
        raise CheckpointError(f"{name} is a damaged mnist_ray checkpoint (missing or wrong: {', '.join(bad)})")
    for key in ("model", "dataset"):
        if state[key] not in CHOICES[key]:
            raise CheckpointError(f"{name} names an unknown {key} {state[key]!r}; valid: {', '.join(CHOICES[key])}")
    stats = state.get("normalization", {"mean": 0.0, "std": 1.0})  # absent: an older checkpoint, still valid
    numbers = isinstance(stats, dict) and all(isinstance(stats.get(k), float) for k in ("mean", "std"))
    if not numbers or not (math.isfinite(stats["mean"]) and math.isfinite(stats["std"]) and stats["std"] > 0):
        raise CheckpointError(f"{name} is a damaged mnist_ray checkpoint (normalization {stats!r})")


def resume_weights(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The weights a resumed run continues training, and their moving average if the run keeps one (else None)."""
    trained = state.get("trained_state_dict")
    return (state["state_dict"], None) if trained is None else (trained, state["state_dict"])


def normalization(state: dict[str, Any]) -> data.Normalization:
    """The input statistics a loaded checkpoint was trained with (older checkpoints: MNIST's, as they were)."""
    stats = state.get("normalization")
    return data.Normalization(stats["mean"], stats["std"]) if stats else LEGACY_NORMALIZATION


def publish_best(checkpoint: Any, run: RunFolder) -> str:
    """Copy a Ray Train ``Checkpoint``'s model.pt to the run's best checkpoint (atomically)."""
    target = run.best_checkpoint
    with checkpoint.as_directory() as folder:
        storage.upload_file(Path(folder) / CHECKPOINT_FILE, target)
    return target


def build_model(state: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    model = models.build(state["model"], dropout=state["config"].get("dropout", 0.0))
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc))
        raise CheckpointError(
            f"checkpoint weights do not fit the {state['model']} architecture ({first[:160]}): "
            "was it saved from another model?"
        ) from None
    return model.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP, so saved keys have no ``module.`` prefix."""
    return model.module if hasattr(model, "module") else model
