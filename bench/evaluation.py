"""P4 evaluation speed: wall time of jobs/evaluate.py on the 10k test set (median of 3), and Ray Data
batch-inference images/s against a plain torch inference loop over the same checkpoint, same run: on the 10k test
set (end to end, reading the IDX files in Ray Data tasks included) and on the test set repeated 10 times (100k
images, where start-up is amortised), each as interleaved (Ray Data, plain) pairs whose ratios' median is kept:
the plain loop's own speed varies here from run to run."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from bench import common
from mnist_ray import data
from mnist_ray.cluster import connection
from mnist_ray.inference import evaluation, scoring
from mnist_ray.training import checkpoints, models

REPEATS = 3


def plain(state: dict, images: np.ndarray, threads: int = 2, batch: int = scoring.CPU_CHUNK) -> float:
    """images/s of a plain single-process inference loop, in the layout and chunks the inference actors use."""
    models.set_cpu_threads(threads)
    model = checkpoints.build_model(state).to(memory_format=torch.channels_last)
    x = data.normalize(images)
    with torch.inference_mode():
        model(x[:batch])  # warm-up: first-call allocations are not throughput
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            model(x[i : i + batch]).argmax(1)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    run_dir = common.WORK / "runs" / "cnn_default"
    if not (run_dir / "best_checkpoint" / "model.pt").is_file():
        common.train("cnn_default")
    walls = [common.evaluate(run_dir, f"bench-eval-{i}")[0] for i in range(REPEATS)]
    ckpt = run_dir / "best_checkpoint" / "model.pt"
    prep = evaluation.prepare(str(ckpt))
    arrays = data.load()
    big = data.write_test(common.WORK / "test_100k", np.tile(arrays.test_x, (10, 1, 1)), np.tile(arrays.test_y, 10))
    connection.connect()
    evaluation.score_test_set(prep)  # warm: worker processes started once
    small = pairs(prep, arrays.test_x)
    large = pairs(evaluation.Prepared(prep.members, prep.states, big), np.tile(arrays.test_x, (10, 1, 1)))
    common.save(
        "evaluation",
        {
            "command": f"python jobs/evaluate.py --run {run_dir}",
            "evaluate_wall_s_runs": [round(w, 1) for w in walls],
            "evaluate_wall_s_median": round(common.median(walls), 1),
            **{f"{k}": v for k, v in small.items()},
            **{f"{k}_100k": v for k, v in large.items()},
        },
    )
    ray.shutdown()  # later benchmarks start Ray of their own: never two local instances on 2 cores


def pairs(prep: evaluation.Prepared, images: np.ndarray) -> dict:
    """REPEATS interleaved (Ray Data, plain) passes over ``prep``'s test files (the plain loop over ``images``, the
    same pixels already in memory); rates, medians and the median of the pairs' ratios."""
    ray_rates, plain_rates = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        evaluation.score_test_set(prep)
        ray_rates.append(round(prep.test.n / (time.perf_counter() - start)))
        plain_rates.append(round(plain(prep.states[0], images)))
    ratios = [r / p for r, p in zip(ray_rates, plain_rates, strict=True)]
    return {
        "ray_data_images_per_s_runs": ray_rates,
        "plain_images_per_s_runs": plain_rates,
        "ray_data_images_per_s": common.median(ray_rates),
        "plain_images_per_s": common.median(plain_rates),
        "ratio_runs": [round(r, 3) for r in ratios],
        "ratio": round(common.median(ratios), 3),
    }


if __name__ == "__main__":
    main()
