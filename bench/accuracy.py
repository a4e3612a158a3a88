"""Accuracy and time-to-accuracy: default CNN, ANN, --preset best (and the CNNs tried for it) and --preset fast,
each trained from scratch with jobs/train.py and its best checkpoint evaluated on the 10k test set with
jobs/evaluate.py.

Also the fixed overhead of jobs/train.py (wall time minus the summed epoch times) and peak memory.
"""

from __future__ import annotations

import re
import sys

import pandas as pd

from bench import common

WIDE = ["--model", "cnn_wide", "--epochs", "40", "--label-smoothing", "0.1"]
SMALL_BEST = ["--preset", "best", "--model", "cnn"]
DEEP = ["--preset", "best", "--model", "cnn_deep"]
DEEP_EMA_ELASTIC = [*DEEP, "--ema", "0.999", "--elastic", "1.5"]
RECIPES = {
    "cnn_default": [],
    "ann": ["--model", "ann", "--epochs", "20", "--lr", "2e-3"],
    "cnn_fast": ["--preset", "fast"],
    # --preset best as it was until 2026-12-03, the small CNN for 30 epochs: three seeds, their mean and spread, and
    # members of bench.ensemble best.
    "cnn_small_best": SMALL_BEST,
    "cnn_small_best_seed1": [*SMALL_BEST, "--seed", "1"],
    "cnn_small_best_seed2": [*SMALL_BEST, "--seed", "2"],
    # The CNN at twice the width, longer and with label smoothing: a stronger single model tried for issue 26, and
    # a second architecture for an ensemble.
    "cnn_wide": WIDE,
    "cnn_wide_seed1": [*WIDE, "--seed", "1"],
    "cnn_wide_seed2": [*WIDE, "--seed", "2"],
    # Two conv blocks before each pool (issue 26): --preset best since 2026-12-03 (its model named, as in the runs).
    "cnn_deep": DEEP,
    "cnn_deep_seed1": [*DEEP, "--seed", "1"],
    "cnn_deep_seed2": [*DEEP, "--seed", "2"],
    # The deeper CNN with a moving average of its weights, alone and with elastic distortion on top of the affine
    # augmentation.
    "cnn_deep_ema": [*DEEP, "--ema", "0.999"],
    "cnn_deep_ema_elastic": DEEP_EMA_ELASTIC,
    "cnn_deep_ema_elastic_seed1": [*DEEP_EMA_ELASTIC, "--seed", "1"],
    "cnn_deep_ema_elastic_seed2": [*DEEP_EMA_ELASTIC, "--seed", "2"],
}


def measure(name: str, flags: list[str]) -> dict:
    """Train, evaluate, and collect the figures of one recipe."""
    wall, run_dir, stdout = common.train(name, *flags)
    history = pd.read_parquet(run_dir / "history.parquet")
    eval_wall, metrics = common.evaluate(run_dir, f"bench-{name}")
    rss = re.search(r"peak RSS: driver (\d+) MB, worker (\d+) MB", stdout)
    return {
        "command": "python jobs/train.py " + " ".join(flags),
        "epochs": len(history),
        "train_wall_s": round(wall, 1),
        "sum_epoch_s": round(float(history["epoch_s"].sum()), 1),
        "fixed_overhead_s": round(wall - float(history["epoch_s"].sum()), 1),
        "best_val_acc": float(history["val_acc"].max()),
        "test_accuracy": float(metrics["accuracy"]),
        "test_loss": float(metrics["loss"]),
        "evaluate_wall_s": round(eval_wall, 1),
        "driver_peak_rss_mb": int(rss.group(1)) if rss else None,
        "worker_peak_rss_mb": int(rss.group(2)) if rss else None,
        "train_images_per_s_median": round(float(history["images_per_s"].median())),
    }


def main(names: list[str]) -> None:
    for name in names or list(RECIPES):
        common.save(f"accuracy_{name}", measure(name, RECIPES[name]))


if __name__ == "__main__":
    main(sys.argv[1:])
