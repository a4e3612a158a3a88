"""P1 throughput parity and scaling: training images/s of the same loop under Ray Train and as a plain
single-process PyTorch loop, same model, batch size, data and cores, measured in the same run.

Each layout trains 2 epochs on 20,000 images without augmentation; the second epoch's images/s counts
(the first includes warm-up). Three repetitions, median reported.
"""

from __future__ import annotations

import time

import pandas as pd
import torch

from bench import common
from mnist_ray import data
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import models, step, worker

SUBSET = {"train_limit": 20000, "epochs": 2, "augment": False, "batch_size": 128, "val_size": 1000}
REPEATS = 3


def plain_loop(threads: int) -> float:
    """images/s of step.train_epoch in this process (no Ray), second epoch."""
    models.set_cpu_threads(threads)
    cfg = TrainConfig(**SUBSET, num_workers=1, cpus_per_worker=threads)
    arrays = data.load("mnist")
    train_idx, val_idx = data.split_train_val(60000, cfg.val_size, cfg.seed, cfg.train_limit)
    cpu = torch.device("cpu")
    train = worker.shard(arrays.train_x[train_idx], arrays.train_y[train_idx], 0, 1, cpu, equal=True)
    val = worker.shard(arrays.train_x[val_idx], arrays.train_y[val_idx], 0, 1, cpu, equal=False)
    speed = step.SpeedOptions(channels_last=cfg.channels_last)  # the layout a Ray Train worker uses
    state = step.WorkerState.create(models.build("cnn", seed=0), train, val, cfg, speed=speed)
    rate = 0.0
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        step.train_epoch(state, epoch)
        rate = len(train[0]) / (time.perf_counter() - start)
    return rate


def ray_train(workers: int, cpus: int, env: dict[str, str] | None = None) -> float:
    """images/s reported by a Ray Train run (second epoch); ``env`` adds to the job's environment."""
    flags = [
        "--no-augment",
        "--epochs",
        "2",
        "--train-limit",
        "20000",
        "--val-size",
        "1000",
        "--batch-size",
        "128",
        "--num-workers",
        str(workers),
        "--cpus-per-worker",
        str(cpus),
    ]
    _, run_dir, _ = common.train(f"p1_{workers}x{cpus}", *flags, env=env)
    return float(pd.read_parquet(run_dir / "history.parquet")["images_per_s"].iloc[-1])


def interleaved(name: str, command: str, layouts: dict) -> None:
    """Run every layout REPEATS times, interleaved (drift in the machine's speed hits every layout alike), and save
    each one's runs, median and ratio to the plain 2-thread loop as bench/results/<name>.json."""
    runs: dict[str, list[float]] = {layout: [] for layout in layouts}
    for _ in range(REPEATS):
        for layout, fn in layouts.items():
            runs[layout].append(round(fn()))
    med = {layout: common.median(v) for layout, v in runs.items()}
    base = med["plain 1 process x 2 threads"]
    common.save(
        name,
        {
            "command": command,
            "setup": SUBSET,
            "runs_images_per_s": runs,
            "median_images_per_s": med,
            "ratio_vs_plain_2_threads": {k: round(v / base, 3) for k, v in med.items() if k.startswith("ray")},
        },
    )


def main() -> None:
    layouts = {
        "plain 1 process x 2 threads": lambda: plain_loop(2),
        "plain 1 process x 1 thread": lambda: plain_loop(1),
        "ray 2 workers x 1 CPU": lambda: ray_train(2, 1),
        "ray 1 worker x 2 CPUs": lambda: ray_train(1, 2),
        "ray 1 worker x 1 CPU": lambda: ray_train(1, 1),
    }
    interleaved("throughput", "python bench/throughput.py", layouts)


LEVERS = {
    "ours (health check 0.1 s, Ray's worker niceness 15)": {},
    "health check every 2.0 s (Ray's default)": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"},
    "workers at niceness 0": {"RAY_worker_niceness": "0"},
}
"""P1 levers for the 1 worker x 2 CPUs layout (both cores, one process): the job's environment for each."""


def levers() -> None:
    """A/B of what could make Ray 1 worker x 2 CPUs slower than a plain 2-thread loop: interleaved, medians of 3."""
    layouts = {"plain 1 process x 2 threads": lambda: plain_loop(2)}
    for name, env in LEVERS.items():
        layouts[f"ray 1 worker x 2 CPUs, {name}"] = lambda env=env: ray_train(1, 2, env)
    interleaved("throughput_levers", "python bench/run_all.py throughput_levers", layouts)


if __name__ == "__main__":
    main()
