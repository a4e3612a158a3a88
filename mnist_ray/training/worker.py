"""The training loop that runs on every Ray Train worker, shared by the train and tune jobs.

``train_loop_per_worker`` receives the config as a dict plus object-store references to the
uint8 train/validation arrays; each worker keeps only its shard, normalised once into tensors.
``ray.train.report`` is the only place the loop talks to Ray; in a run tracked in MLflow, rank 0 also
logs each reported epoch there (:func:`mnist_ray.reports.tracking.worker_logger`).

On a GPU the step stays on the device: shards, shuffling and augmentation random numbers live
there, and loss and accuracy are summed there, so the host reads a worker's figures once per
epoch (:func:`train_steps` never synchronises). :class:`GpuSpeed` holds the GPU-only switches;
each is a no-op on a CPU, so CPU runs compute exactly what they did before these switches existed.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mnist_ray import data
from mnist_ray.reports import tracking
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models, optim

EVAL_BATCH = 1024
PROFILE_ENV = "MNIST_RAY_PROFILE_DIR"
"""A folder: each worker profiles its second epoch with torch.profiler into ``<folder>/<name>.txt`` (bench/gpu)."""


@dataclass(frozen=True)
class GpuSpeed:
    """Speed switches of the training step (bench/gpu measures each on and off): channels_last acts on every
    device (a run sets it from ``TrainConfig.channels_last``), the others on CUDA devices only."""

    channels_last: bool = True
    """NHWC weights and activations: the layout cuDNN's bf16 convolutions are fastest in, and on a CPU oneDNN's
    (the CNN's training step 1.3-1.5x faster here, bench/NOTES.md)."""
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


def autocast(x: torch.Tensor, bf16: bool = True) -> torch.autocast:
    """bf16 autocast for tensors on a CUDA device; a disabled context (fp32, unchanged) on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and x.is_cuda)


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The config's optimizer, with weight decay on weights only (``fused``: one kernel per step, GPU only)."""
    groups = optim.param_groups(model, cfg.weight_decay)
    return optim.build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, fused=fused)


def place_model(model: nn.Module, device: torch.device, speed: GpuSpeed) -> nn.Module:
    """``model`` on ``device``, in channels_last as ``speed`` says; on CUDA with cuDNN autotuning as it says.

    Only 4-d weights change layout (``nn.Module.to``), so the ANN is the same either way.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = speed.cudnn_benchmark
    return model.to(device, memory_format=torch.channels_last if speed.channels_last else torch.preserve_format)


def gpu_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, speed: GpuSpeed) -> torch.optim.Optimizer:
    """The config's optimizer, fused on CUDA when ``speed`` says so (always unfused on a CPU)."""
    return build_optimizer(model, cfg, fused=device.type == "cuda" and speed.fused_optimizer)


def forward_fn(model: nn.Module, device: torch.device, speed: GpuSpeed) -> nn.Module:
    """What the training step calls: ``model``, or on CUDA its torch.compile'd form when ``speed.compile`` is set.

    The plain ``model`` stays the one that is evaluated and checkpointed (no ``_orig_mod.`` keys).
    """
    if device.type == "cuda" and speed.compile:
        return torch.compile(model, mode=speed.compile)
    return model


def epoch_generator(cfg: TrainConfig, epoch: int, rank: int, device: torch.device, speed: GpuSpeed) -> torch.Generator:
    """Seeds dropout and returns the shuffling/augmentation generator of (seed, epoch, rank).

    Seeding by (seed, epoch, rank) makes a resumed run replay exactly what an uninterrupted one does.
    """
    seed = cfg.seed * 1_000_003 + epoch * 1009 + rank
    torch.manual_seed(seed)
    on_gpu = device.type == "cuda" and speed.device_rng
    return torch.Generator(device=device if on_gpu else "cpu").manual_seed(seed)


def random_affine(x: torch.Tensor, gen: torch.Generator, stats: data.Normalization | None = None) -> torch.Tensor:
    """Batched random rotation (±10°), scale (0.9–1.1) and shift (±2 px) of images normalised with ``stats``.

    The random numbers come from ``gen`` on its own device (the CPU, or the GPU the images are on).
    """
    n, where = x.shape[0], gen.device
    angle = (torch.rand(n, generator=gen, device=where) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen, device=where) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen, device=where) * 2 - 1) * (2 / 14)  # affine_grid units: 14 px per 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    background = (stats or data.DATASET_INFO["mnist"].normalization).background  # a black pixel, normalised
    return F.grid_sample(x - background, grid, align_corners=False) + background


def shard(
    x: np.ndarray,
    y: np.ndarray,
    rank: int,
    world: int,
    device: torch.device,
    equal: bool,
    stats: data.Normalization | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's slice (every world-th image) of uint8 images and labels, as tensors on ``device``.

    Images are normalised with ``stats`` (the dataset's; None: MNIST's).
    """
    n = (len(x) // world) * world if equal else len(x)  # equal shards keep DDP steps in lockstep
    idx = np.arange(rank, n, world)
    return data.normalize(x[idx], stats).to(device), torch.from_numpy(y[idx]).to(device)


def _all_sum(values: list, device: torch.device) -> list[float]:
    """Sum a few scalars (numbers or 0-d tensors on ``device``) over all workers: the one host read."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    epoch: int,
    gen: torch.Generator,
    forward: nn.Module | None = None,
    bf16: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The optimizer steps of one pass over this worker's shard, without one host read.

    Returns this worker's summed loss and correct count as tensors on the shard's device, and the last lr.
    """
    forward = forward or model
    model.train()
    batch = cfg.per_worker_batch
    steps = math.ceil(len(x) / batch)
    perm = torch.randperm(len(x), generator=gen, device=gen.device).to(x.device)
    loss_sum = correct = torch.zeros((), device=x.device)
    lr = cfg.lr
    for i in range(steps):
        idx = perm[i * batch : (i + 1) * batch]
        xb, yb = x[idx], y[idx]
        if cfg.augment:
            xb = random_affine(xb, gen, data.DATASET_INFO[cfg.dataset].normalization)
        lr = optim.lr_at(epoch * steps + i, cfg.epochs * steps, cfg.lr, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(x, bf16):
            logits = forward(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum = loss_sum + loss.detach() * len(yb)
        correct = correct + (logits.argmax(1) == yb).sum()
    return loss_sum, correct, lr


def train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, *args: Any, **kw: Any
) -> tuple[float, float, float]:
    """One pass over this worker's shard (:func:`train_steps`' arguments); returns global (loss, accuracy, last lr)."""
    loss_sum, correct, lr = train_steps(model, optimizer, *args, **kw)
    x = args[0]
    total_loss, total_correct, n = _all_sum([loss_sum, correct, len(x)], x.device)
    return total_loss / n, total_correct / n, lr


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = True) -> tuple[float, float]:
    """Global mean cross-entropy and accuracy over every worker's validation shard."""
    model.eval()
    loss_sum = correct = torch.zeros((), dtype=torch.float64, device=x.device)  # float64: as exact as Python floats
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
        with autocast(x, bf16):
            logits = model(xb).float()
        loss_sum = loss_sum + F.cross_entropy(logits, yb, reduction="sum").double()
        correct = correct + (logits.argmax(1) == yb).sum().double()
    total_loss, total_correct, n = _all_sum([loss_sum, correct, len(x)], x.device)
    return total_loss / n, total_correct / n


def fit_epoch(
    model: nn.Module,
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    speed: GpuSpeed | None = None,
) -> dict[str, Any]:
    """Train one epoch on this worker's shards and validate; the epoch's metrics (as reported to Ray)."""
    device, speed = train[0].device, speed or GpuSpeed()
    gen = epoch_generator(cfg, epoch, rank, device, speed)
    start = time.perf_counter()
    train_loss, train_acc, lr = train_epoch(model, optimizer, *train, cfg, epoch, gen, forward, speed.bf16)
    train_s = time.perf_counter() - start  # train_epoch ends with a host read, so the device is done
    val_loss, val_acc = evaluate(model, *val, bf16=speed.bf16)
    metrics = {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "lr": lr,
        "epoch_s": time.perf_counter() - start,
        "images_per_s": len(train[0]) * world / train_s,
        "worker_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        metrics["gpu_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return metrics


@contextlib.contextmanager
def profiled(name: str, active: bool):
    """Profile the block with torch.profiler (CPU, and CUDA on a GPU) when ``$MNIST_RAY_PROFILE_DIR`` is set.

    Writes the operators sorted by self CPU time, then by self CUDA time, to ``<dir>/<name>.txt``: where a
    launch-bound step spends its host time, the same for the Ray Train worker and a plain loop.
    """
    folder = os.environ.get(PROFILE_ENV)
    if not (folder and active):
        yield
        return
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=25)]
    if cuda:
        tables.append(averages.table(sort_by="self_cuda_time_total", row_limit=15))
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{name}.txt").write_text("\n".join(tables))


def _restore(model: nn.Module) -> tuple[int, list[dict[str, Any]], dict | None]:
    """Load the latest checkpoint Ray Train hands us (after a restart or a resumed run), if any."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, [], None
    with checkpoint.as_directory() as folder:
        state = checkpoints.load(folder)
    model.load_state_dict(state["state_dict"])
    return state["epoch"], state["history"], state["optimizer"]


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train ``loop_config['config']`` on this worker's shard, reporting one checkpoint per epoch."""
    cfg = TrainConfig.from_dict(loop_config["config"])
    speed = GpuSpeed(channels_last=cfg.channels_last)  # the rest are the GPU recipe's (no effect on CPU workers)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    models.set_cpu_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    stats = data.DATASET_INFO[cfg.dataset].normalization  # checkpoints.save stores the same, for scoring
    train = shard(*ray.get(list(loop_config["train"])), rank, world, device, equal=True, stats=stats)
    val = shard(*ray.get(list(loop_config["val"])), rank, world, device, equal=False, stats=stats)

    model = models.build(cfg.model, cfg.dropout, seed=cfg.seed)
    start_epoch, history, optimizer_state = _restore(model)
    model = ray.train.torch.prepare_model(place_model(model, device, speed))
    optimizer = gpu_optimizer(model, cfg, device, speed)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    forward = forward_fn(model, device, speed)
    mlflow = tracking.worker_logger(loop_config.get("mlflow"), rank)  # rank 0 of a tracked run: MLflow, else None

    for epoch in range(start_epoch, cfg.epochs):
        with profiled(f"ray_train_rank{rank}", active=epoch == start_epoch + 1):
            metrics = fit_epoch(model, forward, optimizer, train, val, cfg, epoch, rank, world, speed)
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                checkpoints.save(  # with the dataset's normalisation, the one used here
                    folder, model=model, optimizer=optimizer, config=cfg.to_dict(), epoch=epoch + 1, history=history
                )
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:03d}")
        if mlflow:  # once its checkpoint is saved: a restarted worker group never logs an epoch twice
            mlflow.log_metrics(metrics, step=epoch + 1)
