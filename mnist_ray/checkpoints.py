"""Checkpoint format: one ``model.pt`` holding weights, optimizer state, config and history.

Everything in it is tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``: a checkpoint can never run code on load. The config
travels with the weights, so a model is rebuilt from its checkpoint alone.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_ray import models
from mnist_ray.errors import CheckpointError

FILENAME = "model.pt"
FORMAT = 1


def save(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    config: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
) -> Path:
    """Write ``model.pt`` into ``directory`` (temp name, then rename) and return its path."""
    path = Path(directory) / FILENAME
    state = {
        "format": FORMAT,
        "model": config["model"],
        "dataset": config["dataset"],
        "config": config,
        "epoch": epoch,
        "history": history,
        "state_dict": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load(path: str | Path, model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    """Load a checkpoint file or a folder holding ``model.pt``, safely (``weights_only=True``).

    ``model`` / ``dataset``, when given, must match what the checkpoint was trained on.
    """
    file = Path(path)
    if file.is_dir():
        file = file / FILENAME
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist: pass a model.pt or a checkpoint folder")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"checkpoint {file} holds objects other than weights; refusing to load it ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"checkpoint {file} is corrupt or truncated: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an mnist_ray checkpoint (format {FORMAT})")
    for key, want in (("model", model), ("dataset", dataset)):
        if want is not None and state[key] != want:
            raise CheckpointError(f"checkpoint {file} is a {key} {state[key]!r}, not {want!r}")
    return state


def build_model(state: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (in eval mode)."""
    model = models.build(state["model"], dropout=state["config"].get("dropout", 0.0))
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit the {state['model']} architecture: {exc}") from None
    return model.eval()


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP, so saved keys have no ``module.`` prefix."""
    return model.module if hasattr(model, "module") else model
