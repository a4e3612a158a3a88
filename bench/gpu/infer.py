"""Ray Data batch inference on the GPU: images/s of ``evaluation.score_test_set(use_gpu=True)`` against a plain loop.

    python -m bench.gpu.infer [--dry-run]

One local Ray with the GPU; one inference actor holding it (``--use-gpu`` gives each actor a whole GPU).
A first pass over the 10k test set starts the actor (timed apart); then the 10k set and the set repeated
10 times (100k images) and 100 times (1M) are timed, each against a plain in-process loop over the same checkpoint
on the same GPU (bf16 autocast, as the actor runs it). Every pass starts its own actor, so the pipeline's rate is
the slope between the 100k and 1M passes ("marginal"). Checkpoint: the default job's best, else the fast job's,
else freshly initialised weights (speed does not depend on them). Results: gpu_inference.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu import common
from mnist_ray import data
from mnist_ray.cluster import connection
from mnist_ray.inference import evaluation
from mnist_ray.training import checkpoints, models, step

HUGE = 10
"""The last pass is the 100k set this many times over (1M images): long enough for the pipeline's rate to show."""


def find_checkpoint() -> Path:
    """A trained checkpoint from bench.gpu.jobs, or a fresh one written to the work folder."""
    for name in ("gpu_default", "gpu_fast", "gpu_best"):
        path = common.WORK / "runs" / name / "best_checkpoint" / "model.pt"
        if path.is_file():
            return path
    folder = common.fresh_dir(common.WORK / "untrained")
    config = {"model": "cnn", "dataset": "mnist", "dropout": 0.25}
    return checkpoints.save(folder, model=models.build("cnn"), optimizer=None, config=config, epoch=0, history=[])


@torch.no_grad()
def plain(state: dict, images: np.ndarray, batch: int, use_gpu: bool) -> float:
    """images/s of a plain loop doing what the Predictor does: normalise on the host, copy, bf16 forward."""
    dev = common.device() if use_gpu else torch.device("cpu")
    model = checkpoints.build_model(state).to(dev)
    model(data.normalize(images[:batch]).to(dev))  # warm-up: cuDNN and allocator
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        x = data.normalize(images[i : i + batch]).to(dev)
        with step.autocast(x):
            model(x).float().argmax(1).cpu()
    return len(images) / (time.perf_counter() - start)


def timed_predict(prep: evaluation.Prepared, use_gpu: bool, batch: int) -> tuple[float, float]:
    """(seconds, accuracy) of one Ray Data pass over ``prep``'s test images."""
    start = time.perf_counter()
    ev = evaluation.score_test_set(prep, use_gpu=use_gpu, actors=1, batch_size=batch)
    return time.perf_counter() - start, float(ev.predictions["correct"].mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU smoke: 1,000 images, no GPU")
    p.add_argument("--batch-size", type=int, default=1000, help="images per inference batch (the job's default)")
    args = p.parse_args()
    use_gpu = torch.cuda.is_available() and not args.dry_run
    ckpt = find_checkpoint()
    prep = evaluation.prepare(str(ckpt))
    test = data.load()
    x, y = (test.test_x[:1000], test.test_y[:1000]) if args.dry_run else (test.test_x, test.test_y)

    def tiled(times: int) -> tuple[evaluation.Prepared, np.ndarray]:
        """The test set ``times`` over, as IDX files the pipeline reads, and as the plain loop's array."""
        images = np.tile(x, (times, 1, 1))
        files = data.write_test(common.WORK / f"test_x{times}", images, np.tile(y, times))
        return evaluation.Prepared(prep.members, prep.states, files), images

    base, images = tiled(1)
    connection.connect(num_cpus=4 if use_gpu else 2)
    first_s, accuracy = timed_predict(base, use_gpu, args.batch_size)
    result = {
        "checkpoint": str(ckpt),
        "use_gpu": use_gpu,
        "batch_size": args.batch_size,
        "first_pass_s": round(first_s, 2),
    }
    n = len(images)
    seconds, _ = timed_predict(base, use_gpu, args.batch_size)
    result.update(test_accuracy_bf16=accuracy, n=n, ray_data_images_per_s=round(n / seconds))
    result["plain_images_per_s"] = round(plain(prep.states[0], images, args.batch_size, use_gpu))
    big, big_images = tiled(10)
    seconds, _ = timed_predict(big, use_gpu, args.batch_size)
    result.update(n_big=len(big_images), ray_data_images_per_s_big=round(len(big_images) / seconds))
    result["plain_images_per_s_big"] = round(plain(prep.states[0], big_images, args.batch_size, use_gpu))
    result["ratio_big"] = round(result["ray_data_images_per_s_big"] / result["plain_images_per_s_big"], 3)
    common.save("gpu_inference", "ray_data", result)  # kept if the huge pass below runs out of time
    # Each pass pays a fresh actor's start (seconds on a GPU machine), so the pipeline's own rate is the slope
    # between two sizes: (extra images) / (extra seconds) between the 100k pass and a pass HUGE times longer.
    huge, huge_images = tiled(10 * (2 if args.dry_run else HUGE))
    huge_s, _ = timed_predict(huge, use_gpu, args.batch_size)
    extra = len(huge_images) - len(big_images)
    result.update(
        n_huge=len(huge_images),
        ray_data_huge_s=round(huge_s, 2),
        ray_data_marginal_images_per_s=round(extra / max(huge_s - seconds, 1e-9)),
        plain_images_per_s_huge=round(plain(prep.states[0], huge_images, args.batch_size, use_gpu)),
    )
    result["ratio_marginal"] = round(result["ray_data_marginal_images_per_s"] / result["plain_images_per_s_huge"], 3)
    if use_gpu:
        result["gpu_max_allocated_mb_driver"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    common.save("gpu_inference", "ray_data", result)


if __name__ == "__main__":
    main()
