"""GPU training speed without Ray: each GPU switch on and off, batch sizes, torch.compile, candidate recipes.

    python -m bench.gpu.speed ab|compile|recipes [--dry-run] [--budget-s S]

All runs are the 1-worker training loop in this process (the functions the Ray Train worker calls), on the
same GPU, in the same invocation, so they compare with each other and with Ray Train's figure from
bench.gpu.jobs (gpu_jobs.json) measured minutes earlier on the same machine:

* ab: steady-state training images/s (median over epochs 2-3 of the full 55k split, epoch 1 is warm-up)
  of the GPU step as it was (every switch off), each switch on alone, all on, and batch sizes;
  "preset" (--preset gpu, all switches on) is the plain loop that Ray Train's steady images/s is held to.
* compile: the same with torch.compile of the forward pass (default and reduce-overhead, i.e. CUDA graphs),
  with the compile time (epoch 1 minus a steady epoch) reported apart.
* recipes: candidate recipes trained in full, with test accuracy, to pick the GPU default and best recipe.

Results: gpu_speed.json, one section per mode; every variant is written as soon as it is measured.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from bench.gpu import common
from mnist_ray import data
from mnist_ray.settings.config import load_config
from mnist_ray.training.step import SpeedOptions

PRESET = load_config("gpu")
ALL_ON = SpeedOptions()


B512 = {"batch_size": 512, "lr": 8e-3}
"""The batch the switches were first measured at (the gpu preset's until 2026-11-26's H100 runs)."""


def ab_variants() -> dict[str, tuple[dict, SpeedOptions]]:
    """Name -> (config changes from --preset gpu, switches)."""
    one_on = {
        f"+{name}": (B512, replace(common.OFF, **{name: True}))
        for name in ("device_rng", "channels_last", "fused_optimizer", "cudnn_benchmark")
    }
    return {
        "before (all off, batch 128)": ({"batch_size": 128, "lr": 4e-3}, common.OFF),
        "all on, batch 128": ({"batch_size": 128, "lr": 4e-3}, ALL_ON),
        "all off": (B512, common.OFF),
        **one_on,
        "all on, batch 512": (B512, ALL_ON),
        "preset": ({}, ALL_ON),
        "preset without bf16 (fp32)": ({}, replace(ALL_ON, bf16=False)),
        # fp32 ran second and faster in both H100 runs: the preset again after it shows whether order did that
        "preset again": ({}, ALL_ON),
        "all on, batch 256": ({"batch_size": 256}, ALL_ON),
        "all on, batch 2048": ({"batch_size": 2048, "lr": 1.6e-2}, ALL_ON),
    }


COMPILE = {  # CUDA graphs first: they are what a launch-bound step needs
    "compile reduce-overhead": ({}, replace(ALL_ON, compile="reduce-overhead")),
    "compile default": ({}, replace(ALL_ON, compile="default")),
}
RECIPES = {
    "b256 lr6e-3 30ep": {"batch_size": 256, "lr": 6e-3, "epochs": 30},
    "b1024 lr1.1e-2 40ep": {"batch_size": 1024, "lr": 1.1e-2, "epochs": 40},
    "b256 lr6e-3 60ep ls0.1": {"batch_size": 256, "lr": 6e-3, "epochs": 60, "label_smoothing": 0.1},
    "b128 lr4e-3 40ep": {"batch_size": 128, "lr": 4e-3, "epochs": 40},
}


def throughput(changes: dict, speed: SpeedOptions, arrays: data.Arrays, dry_run: bool) -> dict[str, Any]:
    """Steady-state images/s of 3 epochs (the schedule of the full run), compile/warm-up time apart."""
    cfg = replace(PRESET, **changes)
    cfg = common.dry(cfg) if dry_run else cfg
    start = time.perf_counter()
    _, history = common.plain_fit(cfg, speed, arrays, epochs=3)
    rate = common.steady(history)
    first_extra = history[0]["epoch_s"] - common.steady(history, "epoch_s")
    out = {
        "batch_size": cfg.batch_size,
        "speed": asdict(speed),
        "images_per_s": round(rate),
        "images_per_s_by_epoch": [round(h["images_per_s"]) for h in history],
        "first_epoch_extra_s": round(first_extra, 2),
        "wall_s": round(time.perf_counter() - start, 2),
    }
    if torch.cuda.is_available():
        out["gpu_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def recipe(changes: dict, arrays: data.Arrays, dry_run: bool) -> dict[str, Any]:
    """Train a candidate recipe in full (all switches on) and report its accuracy and time."""
    cfg = replace(PRESET, **changes)
    cfg = common.dry(cfg) if dry_run else cfg
    start = time.perf_counter()
    model, history = common.plain_fit(cfg, ALL_ON, arrays)
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k in changes or k in ("batch_size", "lr", "epochs")},
        "train_s": round(time.perf_counter() - start, 2),
        "steady_images_per_s": round(common.steady(history)),
        "final_val_acc": history[-1]["val_acc"],
        "best_val_acc": max(h["val_acc"] for h in history),
        **common.test_metrics(model, arrays),  # the final model (the job would keep the best-val epoch)
    }


def measure(mode: str, spec: Any, arrays: data.Arrays, dry_run: bool, ran_one: bool, deadline: float) -> Any:
    """One variant's figures, or why there are none (out of time, or its error: one failure ends no others)."""
    if ran_one and time.perf_counter() > deadline:  # the first variant always runs
        return "skipped: out of time"
    try:
        return recipe(spec, arrays, dry_run) if mode == "recipes" else throughput(*spec, arrays, dry_run)
    except Exception as exc:  # noqa: BLE001 - e.g. a compile mode this torch cannot do
        return f"failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
    finally:
        if mode == "compile":
            torch._dynamo.reset()  # each mode compiles from scratch: its compile time is its own


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["ab", "compile", "recipes"])
    p.add_argument("--dry-run", action="store_true", help="CPU smoke: 1k images, batch <= 128")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no new variant after this many seconds")
    args = p.parse_args()
    arrays = data.load("mnist")
    deadline = time.perf_counter() + args.budget_s
    results: dict[str, Any] = {}
    todo = {"ab": ab_variants(), "compile": COMPILE, "recipes": RECIPES}[args.mode]
    for name, spec in todo.items():
        ran_one = bool(results)
        results[name] = "started, not finished within the step's time limit"  # what stays if run.sh kills us
        common.save("gpu_speed", args.mode, results, show={name: "started"})
        results[name] = measure(args.mode, spec, arrays, args.dry_run, ran_one=ran_one, deadline=deadline)
        common.save("gpu_speed", args.mode, results, show={name: results[name]})


if __name__ == "__main__":
    main()
