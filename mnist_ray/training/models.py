"""Model registry: architectures looked up by name, each taking (N, 1, 28, 28) to 10 logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mnist_ray.errors import ConfigError

NUM_CLASSES = 10


def ann(dropout: float = 0.25) -> nn.Module:
    """Fully connected network, the notebook's first model: 784-512-256-10 with dropout."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(512, 256),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(256, NUM_CLASSES),
    )


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _stage(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
    """``convs`` conv + batch norm blocks from ``c_in`` to ``c_out`` channels, then a 2x2 max pool."""
    layers = _conv_block(c_in, c_out)
    for _ in range(convs - 1):
        layers += _conv_block(c_out, c_out)
    return [*layers, nn.MaxPool2d(2)]


def _vgg(width: int, head: int, dropout: float, convs: int = 1) -> nn.Module:
    """Three stages of ``convs`` conv + batch norm blocks each, of ``width``, 2x and 4x channels, each max-pooled
    (28 -> 14 -> 7 -> 3), then a ``head``-unit hidden layer."""
    return nn.Sequential(
        *_stage(1, width, convs),
        *_stage(width, 2 * width, convs),
        *_stage(2 * width, 4 * width, convs),
        nn.Flatten(),
        nn.Linear(4 * width * 3 * 3, head),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(head, NUM_CLASSES),
    )


def cnn(dropout: float = 0.25) -> nn.Module:
    """Small VGG-style CNN: 16, 32 and 64 channels, then a 128-unit head.

    Sized for CPUs: small enough that an epoch takes seconds on two cores, and large enough for the 99.4% test
    accuracy goal with augmentation and a one-cycle schedule (docs/benchmarks.md).
    """
    return _vgg(16, 128, dropout)


def cnn_wide(dropout: float = 0.25) -> nn.Module:
    """The same CNN twice as wide (32, 64 and 128 channels, a 256-unit head): 4x the parameters of ``cnn`` and a
    slower step, for the ``best`` recipe, where accuracy matters more than time."""
    return _vgg(32, 256, dropout)


def cnn_deep(dropout: float = 0.25) -> nn.Module:
    """The CNN with two conv + batch norm blocks before each pool (16, 32 and 64 channels), as in the published
    99.7% single CNNs: a larger receptive field per stage for 1.5x the parameters of ``cnn``."""
    return _vgg(16, 128, dropout, convs=2)


REGISTRY: dict[str, Callable[..., nn.Module]] = {"ann": ann, "cnn": cnn, "cnn_wide": cnn_wide, "cnn_deep": cnn_deep}


def build(name: str, dropout: float = 0.25, seed: int | None = None) -> nn.Module:
    """Instantiate the registered model ``name``; seeded initialisation when ``seed`` is given."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(REGISTRY)}")
    if seed is not None:
        torch.manual_seed(seed)
    return REGISTRY[name](dropout=dropout)


def set_cpu_threads(threads: int) -> None:
    """Run this process's torch CPU ops on ``threads`` threads, with denormal floats flushed to zero.

    Late in a run, tiny gradients make tiny squares in the optimizer's state and weights (below 1.2e-38, where x86
    computes in microcode), and steps slow down several times over. Flushing changes only such values, which are
    noise.
    """
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
