"""Optimizers and learning-rate schedules, each looked up by name in one registry.

The config's choices for ``optimizer`` and ``schedule`` are the keys of these registries, so a
name is declared once and an unknown one fails with the list of valid names instead of falling
through to a default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from mnist_ray.errors import ConfigError

if TYPE_CHECKING:  # torch is imported lazily: the CLI reads the names without loading torch
    import torch
    from torch import nn

    from mnist_ray.settings.config import TrainConfig  # annotation only: the settings read these registries


def _constant(t: float) -> float:
    return 1.0


def _cosine(t: float) -> float:
    return 0.5 * (1 + math.cos(math.pi * t))


def _onecycle(t: float, warm: float = 0.25) -> float:
    """Linear warm-up from 1/25 over 25% of steps, then cosine down to 1e-4."""
    if t < warm:
        return 1 / 25 + (1 - 1 / 25) * t / warm
    return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))


SCHEDULES: dict[str, Callable[[float], float]] = {"none": _constant, "onecycle": _onecycle, "cosine": _cosine}
"""Schedule name -> multiplier of the peak learning rate at training progress t in [0, 1]."""


def _fused(fused: bool) -> dict:
    """``fused=True`` only when asked: left unset, torch keeps its own default (foreach), so CPU runs are unchanged."""
    return {"fused": True} if fused else {}


def _sgd(groups: list[dict], lr: float, momentum: float, fused: bool = False) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **_fused(fused))


def _adam(groups: list[dict], lr: float, momentum: float, fused: bool = False) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(groups, lr=lr, **_fused(fused))


def _adamw(groups: list[dict], lr: float, momentum: float, fused: bool = False) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(groups, lr=lr, **_fused(fused))


def _rmsprop(groups: list[dict], lr: float, momentum: float, fused: bool = False) -> torch.optim.Optimizer:
    import torch

    return torch.optim.RMSprop(groups, lr=lr, momentum=momentum)  # torch has no fused RMSprop: foreach


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "rmsprop": _rmsprop,
}
"""Optimizer name -> builder(groups, lr, momentum, fused); sgd uses Nesterov momentum, adamw decoupled decay."""


def _lookup(kind: str, name: str, registry: dict) -> Callable:
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(registry)}")
    return registry[name]


def lr_at(step: int, total: int, lr: float, schedule: str) -> float:
    """Learning rate at optimizer step ``step`` of ``total``: a pure function, so resume needs no state."""
    return lr * _lookup("schedule", schedule, SCHEDULES)(min(step / max(total, 1), 1.0))


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The config's optimizer over ``model``'s parameters, with weight decay on its weights only.

    It is built with the peak ``cfg.lr``, but the training step sets every group's lr from :func:`lr_at` before each
    step, so that value never trains anything. ``fused``: one fused kernel per step where torch has one (sgd, adam,
    adamw), for GPU training.
    """
    builder = _lookup("optimizer", cfg.optimizer, OPTIMIZERS)
    return builder(param_groups(model, cfg.weight_decay), cfg.lr, cfg.momentum, fused)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights of conv/linear layers only; biases and norm scales are not decayed."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
