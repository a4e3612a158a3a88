"""P4 evaluation speed: wall time of jobs/evaluate.py on the 10k test set (median of 3), and Ray Data
batch-inference images/s against a plain torch inference loop over the same checkpoint, same run: once on
the 10k test set (end to end, actor start-up included) and once on the test set repeated 10 times
(100k images, where start-up is amortised)."""

from __future__ import annotations

import time

import numpy as np
import ray
import torch

from bench import common
from mnist_ray import checkpoints, cluster, data, evaluation, models

REPEATS = 3


def plain(state: dict, arrays: data.Arrays, threads: int = 2, batch: int = evaluation.CPU_CHUNK) -> float:
    """images/s of a plain single-process inference loop, in the layout and chunks the inference actors use."""
    models.set_cpu_threads(threads)
    model = checkpoints.build_model(state).to(memory_format=torch.channels_last)
    x = data.normalize(arrays.test_x)
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
    state, arrays = prep.state, prep.arrays
    cluster.connect()
    evaluation.predict(prep)  # warm: actor and worker processes started once
    ray_rates, plain_rates = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        evaluation.predict(prep)
        ray_rates.append(round(10000 / (time.perf_counter() - start)))
        plain_rates.append(round(plain(state, arrays)))
    big = data.Arrays(arrays.train_x, arrays.train_y, np.tile(arrays.test_x, (10, 1, 1)), np.tile(arrays.test_y, 10))
    start = time.perf_counter()
    evaluation.predict(evaluation.Prepared(str(ckpt), state, big))
    ray_100k = round(len(big.test_y) / (time.perf_counter() - start))
    plain_100k = round(plain(state, big))
    common.save(
        "evaluation",
        {
            "command": f"python jobs/evaluate.py --run {run_dir}",
            "evaluate_wall_s_runs": [round(w, 1) for w in walls],
            "evaluate_wall_s_median": round(common.median(walls), 1),
            "ray_data_images_per_s_runs": ray_rates,
            "plain_images_per_s_runs": plain_rates,
            "ray_data_images_per_s": common.median(ray_rates),
            "plain_images_per_s": common.median(plain_rates),
            "ratio": round(common.median(ray_rates) / common.median(plain_rates), 3),
            "ray_data_images_per_s_100k": ray_100k,
            "plain_images_per_s_100k": plain_100k,
            "ratio_100k": round(ray_100k / plain_100k, 3),
        },
    )
    ray.shutdown()  # later benchmarks start Ray of their own: never two local instances on 2 cores


if __name__ == "__main__":
    main()
