"""Denormal floats in a late checkpoint: training steps with and without flushing them, in both layouts.

    python -m bench.denormals [CHECKPOINT_FOLDER]

The default folder is the sweep bench's retrain at epoch 11 (``python bench/run_all.py sweep`` writes it). The one
measured (a copy, passed as the argument) was written before workers flushed denormals (2026-11-26, 19:35 UTC), by
a retrain whose late epochs ran 4-10x slower than its first ones; a retrain since flushes them, and its checkpoints
have none to show. The steps resume its weights and optimizer state (rmsprop, at lr 1e-6 as late in a one-cycle
schedule) on 1,920 training images, batch 64, in this process, two rounds of every variant, for 1 and 2 threads.
Results: bench/results/denormals.json.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from bench import common
from mnist_ray import data
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models, optim

DEFAULT = common.WORK / "runs" / "from_sweep" / "checkpoint_epoch_011"
BATCH, STEPS, LR = 64, 30, 1e-6


def denormals(tensors) -> int:
    """How many values of ``tensors`` are denormal (non-zero, below float32's smallest normal)."""
    tiny = torch.finfo(torch.float32).tiny
    return sum(int(((t.abs() > 0) & (t.abs() < tiny)).sum()) for t in tensors if t.is_floating_point())


def images_per_s(state: dict, x: torch.Tensor, y: torch.Tensor, channels_last: bool, flush: bool) -> int:
    """Training steps from the checkpoint's weights and optimizer state, images/s."""
    torch.set_flush_denormal(flush)
    model = models.build(state["model"])
    model.load_state_dict(state["state_dict"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = state["config"]
    settings = TrainConfig(optimizer=cfg["optimizer"], weight_decay=cfg["weight_decay"], lr=LR)
    optimizer = optim.build_optimizer(model, settings)
    optimizer.load_state_dict(state["optimizer"])  # its own hyperparameters: lr is set below
    for group in optimizer.param_groups:
        group["lr"] = LR
    model.train()
    start = time.perf_counter()
    for i in range(0, len(x), BATCH):
        loss = F.cross_entropy(model(x[i : i + BATCH]), y[i : i + BATCH])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return round(len(x) / (time.perf_counter() - start))


def main(folder: str = str(DEFAULT)) -> None:
    state = checkpoints.load(folder)
    arrays = data.load(state["dataset"])
    x = data.normalize(arrays.train_x[: BATCH * STEPS], checkpoints.normalization(state))
    y = torch.from_numpy(arrays.train_y[: BATCH * STEPS]).long()
    optimizer_state = [v for s in state["optimizer"]["state"].values() for v in s.values() if torch.is_tensor(v)]
    result: dict = {
        "command": f"python -m bench.denormals {folder}",
        "optimizer": state["config"]["optimizer"],
        "denormal_weights": denormals(state["state_dict"].values()),
        "denormal_optimizer_values": denormals(optimizer_state),
    }
    variants = {
        "NCHW": (False, False),
        "NHWC": (True, False),
        "NCHW flushed": (False, True),
        "NHWC flushed": (True, True),
    }
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows: dict[str, list[int]] = {name: [] for name in variants}
        for _ in range(2):
            for name, (channels_last, flush) in variants.items():
                rows[name].append(images_per_s(state, x, y, channels_last, flush))
        result[f"{threads}_threads_images_per_s"] = rows
    torch.set_flush_denormal(False)
    common.save("denormals", result)


if __name__ == "__main__":
    main(*sys.argv[1:])
