"""One worker's training epoch without Ray: the state it builds once, and the step and validation it runs on it.

:class:`WorkerState` holds what every epoch needs (model, optimizer, this worker's shards, config, rank, speed
options); each epoch function takes it and the epoch number. The Ray Train worker
(:mod:`mnist_ray.training.worker`) and the plain loops of bench/ call the same functions, so they train alike.

On a GPU the step stays on the device: shards, shuffling and augmentation random numbers live there, and loss and
accuracy are summed there, so the host reads a worker's figures once per epoch (:func:`train_steps` never
synchronises).
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mnist_ray import data
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import optim

EVAL_BATCH = 1024


@dataclass(frozen=True)
class SpeedOptions:
    """Switches that change how fast the step runs, not what it computes (beyond float rounding).

    channels_last acts on every device (a run sets it from ``TrainConfig.channels_last``); the others act on CUDA
    devices only and are no-ops on a CPU. bench/gpu measures each on and off.
    """

    channels_last: bool = True
    """NHWC weights and activations: the layout cuDNN's bf16 convolutions are fastest in, and on a CPU oneDNN's."""
    fused_optimizer: bool = True
    """One fused CUDA kernel per optimizer step (sgd, adam, adamw) instead of a loop of foreach kernels."""
    cudnn_benchmark: bool = True
    """cuDNN times its convolution algorithms once per input shape and keeps the fastest."""
    device_rng: bool = True
    """Shuffling and augmentation draw their random numbers on the GPU: no blocking host-to-device copy per step."""
    bf16: bool = True
    """bf16 autocast for training and validation (off: fp32 throughout)."""
    compile: str = ""
    """torch.compile mode for the training forward pass ("" = eager; e.g. "default", "reduce-overhead")."""


def place_model(model: nn.Module, device: torch.device, speed: SpeedOptions) -> nn.Module:
    """``model`` on ``device``, in channels_last as ``speed`` says; on CUDA with cuDNN autotuning as it says.

    Only 4-d weights change layout (``nn.Module.to``), so the ANN is the same either way.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    return model.to(device, memory_format=torch.channels_last if speed.channels_last else torch.preserve_format)


@dataclass
class WorkerState:
    """What one worker's epochs need, built once (:meth:`create`) and passed with the epoch number to each."""

    model: nn.Module
    """The model the optimizer trains (under Ray Train, as ``prepare_model`` wrapped it)."""
    forward: nn.Module
    """What the training step calls: ``model``, or on CUDA its torch.compile'd form (``speed.compile``)."""
    optimizer: torch.optim.Optimizer
    train: tuple[torch.Tensor, torch.Tensor]
    """This worker's normalised training images and labels, on its device."""
    val: tuple[torch.Tensor, torch.Tensor]
    """This worker's normalised validation images and labels, on its device."""
    cfg: TrainConfig
    rank: int = 0
    world: int = 1
    speed: SpeedOptions = SpeedOptions()
    average: nn.Module | None = None
    """The exponential moving average of ``model`` (``cfg.ema``), a plain module; None without one."""

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and checkpointed: the moving average when there is one, else the trained model."""
        return self.average if self.average is not None else self.model

    @property
    def device(self) -> torch.device:
        """Where this worker trains: the device its shards are on."""
        return self.train[0].device

    @classmethod
    def create(
        cls,
        model: nn.Module,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        cfg: TrainConfig,
        *,
        rank: int = 0,
        world: int = 1,
        speed: SpeedOptions | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        optimizer_state: dict | None = None,
        average_state: dict | None = None,
    ) -> WorkerState:
        """Place ``model`` on the shards' device, ``wrap`` it (Ray Train's ``prepare_model``), build its optimizer.

        The optimizer is fused on CUDA when ``speed`` says so, and resumes from ``optimizer_state`` if given. With
        ``cfg.ema``, the moving average starts as a copy of ``model``, or resumes from ``average_state``.
        """
        speed, device = speed or SpeedOptions(), train[0].device
        model = place_model(model, device, speed)
        average = None
        if cfg.ema:
            average = copy.deepcopy(model).requires_grad_(False).eval()
            if average_state is not None:
                average.load_state_dict(average_state)
        if wrap is not None:
            model = wrap(model)
        optimizer = optim.build_optimizer(model, cfg, fused=device.type == "cuda" and speed.fused_optimizer)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        # The plain model stays the one evaluated and checkpointed (no ``_orig_mod.`` keys).
        forward = torch.compile(model, mode=speed.compile) if device.type == "cuda" and speed.compile else model
        return cls(model, forward, optimizer, train, val, cfg, rank, world, speed, average)


def autocast(x: torch.Tensor, bf16: bool = True) -> torch.autocast:
    """bf16 autocast for tensors on a CUDA device; a disabled context (fp32, unchanged) on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and x.is_cuda)


def epoch_generator(state: WorkerState, epoch: int) -> torch.Generator:
    """Seeds dropout and returns the shuffling/augmentation generator of (seed, epoch, rank).

    Seeding by (seed, epoch, rank) makes a resumed run replay exactly what an uninterrupted one does.
    """
    seed = state.cfg.seed * 1_000_003 + epoch * 1009 + state.rank
    torch.manual_seed(seed)
    on_gpu = state.device.type == "cuda" and state.speed.device_rng
    return torch.Generator(device=state.device if on_gpu else "cpu").manual_seed(seed)


ELASTIC_KNOTS = 7
"""Knots per side of the random displacement grid of elastic distortion: one every 4 px of a 28 px image, so
neighbouring pixels move together and strokes bend rather than break."""


def random_affine(
    x: torch.Tensor, gen: torch.Generator, stats: data.Normalization | None = None, elastic: float = 0.0
) -> torch.Tensor:
    """Batched random rotation (±10°), scale (0.9–1.1) and shift (±2 px) of images normalised with ``stats``.

    With ``elastic`` > 0, each image is also bent by a smooth random displacement field: up to ``elastic`` pixels
    at each of a grid of knots, interpolated bicubically between them (Simard et al. 2003, with a coarse grid
    instead of a Gaussian-smoothed one: the same smooth field for a fraction of the arithmetic).
    The random numbers come from ``gen`` on its own device (the CPU, or the GPU the images are on).
    """
    n, where = x.shape[0], gen.device
    angle = (torch.rand(n, generator=gen, device=where) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen, device=where) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen, device=where) * 2 - 1) * (2 / 14)  # affine_grid units: 14 px per 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    if elastic > 0:
        knots = (torch.rand(n, 2, ELASTIC_KNOTS, ELASTIC_KNOTS, generator=gen, device=where) * 2 - 1) * elastic
        field = F.interpolate(knots.to(x.device), size=x.shape[-2:], mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1) * (2 / x.shape[-1])  # pixels to grid units
    background = (stats or data.DATASET_INFO["mnist"].normalization).background  # a black pixel, normalised
    return F.grid_sample(x - background, grid, align_corners=False) + background


@torch.no_grad()
def update_average(average: nn.Module, model: nn.Module, decay: float) -> None:
    """Move ``average``'s weights and batch-norm statistics a ``1 - decay`` step toward ``model``'s (DDP-wrapped or
    not); integer buffers (batch norm's step counts) are copied. Every worker holds the same weights, so the same
    average."""
    plain = model.module if hasattr(model, "module") else model
    for mine, theirs in zip(average.state_dict().values(), plain.state_dict().values(), strict=True):
        if mine.is_floating_point():
            mine.lerp_(theirs, 1 - decay)
        else:
            mine.copy_(theirs)


def _all_sum(values: list, device: torch.device) -> list[float]:
    """Sum a few scalars (numbers or 0-d tensors on ``device``) over all workers: the one host read."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_steps(state: WorkerState, epoch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The optimizer steps of one pass over this worker's shard, shuffled and augmented from ``gen``; no host read.

    Returns this worker's summed loss and correct count as tensors on the shard's device, and the last lr.
    """
    (x, y), cfg, optimizer = state.train, state.cfg, state.optimizer
    state.model.train()
    batch = cfg.per_worker_batch
    steps = math.ceil(len(x) / batch)
    perm = torch.randperm(len(x), generator=gen, device=gen.device).to(x.device)
    loss_sum = correct = torch.zeros((), device=x.device)
    lr = cfg.lr
    for i in range(steps):
        idx = perm[i * batch : (i + 1) * batch]
        xb, yb = x[idx], y[idx]
        if cfg.augment:
            xb = random_affine(xb, gen, data.DATASET_INFO[cfg.dataset].normalization, cfg.elastic)
        # The schedule is a pure function of the step: it sets the lr, whatever the optimizer was built with.
        lr = optim.lr_at(epoch * steps + i, cfg.epochs * steps, cfg.lr, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(x, state.speed.bf16):
            logits = state.forward(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if state.average is not None:
            update_average(state.average, state.model, cfg.ema)
        loss_sum = loss_sum + loss.detach() * len(yb)
        correct = correct + (logits.argmax(1) == yb).sum()
    return loss_sum, correct, lr


def train_epoch(state: WorkerState, epoch: int) -> tuple[float, float, float]:
    """One pass over this worker's shard with the epoch's generator; global (loss, accuracy) and the last lr."""
    loss_sum, correct, lr = train_steps(state, epoch, epoch_generator(state, epoch))
    total_loss, total_correct, n = _all_sum([loss_sum, correct, len(state.train[0])], state.device)
    return total_loss / n, total_correct / n, lr


@torch.no_grad()
def evaluate(state: WorkerState) -> tuple[float, float]:
    """Global mean cross-entropy and accuracy of the evaluated model (:attr:`WorkerState.evaluated`) over every
    worker's validation shard."""
    (x, y), model = state.val, state.evaluated
    model.eval()
    loss_sum = correct = torch.zeros((), dtype=torch.float64, device=x.device)  # float64: as exact as Python floats
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
        with autocast(x, state.speed.bf16):
            logits = model(xb).float()
        loss_sum = loss_sum + F.cross_entropy(logits, yb, reduction="sum").double()
        correct = correct + (logits.argmax(1) == yb).sum().double()
    total_loss, total_correct, n = _all_sum([loss_sum, correct, len(x)], x.device)
    return total_loss / n, total_correct / n


def fit_epoch(state: WorkerState, epoch: int) -> dict[str, Any]:
    """Train one epoch on this worker's shards and validate; the epoch's metrics (as reported to Ray)."""
    start = time.perf_counter()
    train_loss, train_acc, lr = train_epoch(state, epoch)
    train_s = time.perf_counter() - start  # train_epoch ends with a host read, so the device is done
    val_loss, val_acc = evaluate(state)
    metrics = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": lr,
        "epoch_s": time.perf_counter() - start,
        "images_per_s": len(state.train[0]) * state.world / train_s,
        "worker_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if state.device.type == "cuda":
        metrics["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated(state.device) / 2**20
    return metrics
