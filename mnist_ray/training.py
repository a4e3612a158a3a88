"""The training loop that runs on every Ray Train worker, shared by the train and tune jobs.

``train_loop_per_worker`` receives the config as a dict plus object-store references to the
uint8 train/validation arrays; each worker keeps only its shard, normalised once into tensors.
``ray.train.report`` is the only place the loop talks to Ray.
"""

from __future__ import annotations

import math
import resource
import tempfile
import time
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mnist_ray import checkpoints, data, models, optim
from mnist_ray.config import TrainConfig

EVAL_BATCH = 1024


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer, with weight decay on weights only."""
    groups = optim.param_groups(model, cfg.weight_decay)
    return optim.build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)


def random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batched random rotation (±10°), scale (0.9–1.1) and shift (±2 px) of normalised images."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 / 14)  # affine_grid units: 14 px per 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    background = -data.MEAN / data.STD  # a black pixel after normalisation
    return F.grid_sample(x - background, grid, align_corners=False) + background


def _shard(refs: tuple, rank: int, world: int, device: torch.device, equal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This worker's slice (every world-th image) of arrays held in the object store, as tensors."""
    x, y = ray.get(list(refs))
    n = (len(x) // world) * world if equal else len(x)  # equal shards keep DDP steps in lockstep
    idx = np.arange(rank, n, world)
    return data.normalize(x[idx]).to(device), torch.from_numpy(y[idx]).to(device)


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few scalars over all workers (identity on a single worker)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    epoch: int,
    gen: torch.Generator,
) -> tuple[float, float, float]:
    """One pass over this worker's shard; returns global (loss, accuracy, last lr)."""
    model.train()
    batch = cfg.per_worker_batch
    steps = math.ceil(len(x) / batch)
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    loss_sum = correct = 0.0
    lr = cfg.lr
    for i in range(steps):
        idx = perm[i * batch : (i + 1) * batch]
        xb, yb = x[idx], y[idx]
        if cfg.augment:
            xb = random_affine(xb, gen)
        lr = optim.lr_at(epoch * steps + i, cfg.epochs * steps, cfg.lr, cfg.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(yb)
        correct += (logits.argmax(1) == yb).sum()
    total_loss, total_correct, n = _all_sum([float(loss_sum), float(correct), len(x)], x.device)
    return total_loss / n, total_correct / n, lr


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Global mean cross-entropy and accuracy over every worker's validation shard."""
    model.eval()
    loss_sum = correct = 0.0
    for i in range(0, len(x), EVAL_BATCH):
        xb, yb = x[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            logits = model(xb).float()
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += float((logits.argmax(1) == yb).sum())
    total_loss, total_correct, n = _all_sum([loss_sum, correct, len(x)], x.device)
    return total_loss / n, total_correct / n


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
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    device = ray.train.torch.get_device()
    train_x, train_y = _shard(loop_config["train"], rank, world, device, equal=True)
    val_x, val_y = _shard(loop_config["val"], rank, world, device, equal=False)

    model = models.build(cfg.model, cfg.dropout, seed=cfg.seed)
    start_epoch, history, optimizer_state = _restore(model)
    model = ray.train.torch.prepare_model(model)
    optimizer = build_optimizer(model, cfg)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    for epoch in range(start_epoch, cfg.epochs):
        # Seeding by (seed, epoch, rank) makes a resumed run replay exactly what an uninterrupted one does.
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + rank)
        start = time.perf_counter()
        train_loss, train_acc, lr = train_epoch(model, optimizer, train_x, train_y, cfg, epoch, gen)
        train_s = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, val_x, val_y)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": lr,
            "epoch_s": time.perf_counter() - start,
            "images_per_s": len(train_x) * world / train_s,
            "worker_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        history.append(metrics)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                checkpoints.save(
                    folder, model=model, optimizer=optimizer, config=cfg.to_dict(), epoch=epoch + 1, history=history
                )
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_epoch_{epoch + 1:03d}")
