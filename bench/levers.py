"""A/B of Ray's fixed-cost levers on a short train job: interleaved pairs, medians, fixed overhead per job.

Fixed overhead = job wall time (start to exit) minus the time spent in epochs, for
``jobs/train.py --preset smoke --epochs 1``. Each lever runs as "Ray's default" against "ours", in
interleaved pairs so drifts in machine load hit both sides alike.
"""

from __future__ import annotations

import re
import shutil

from bench import common

PAIRS = 3
JOB = ["jobs/train.py", "--preset", "smoke", "--epochs", "1"]
LEVERS = {
    # Train V2's controller polls workers every 2 s: each report and the end of training wait for a poll.
    "health_check_interval": (
        ({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "2.0"}, []),
        ({"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": ""}, []),
    ),
    # Train's preemption watcher: one more actor process per run; a one-machine instance is never preempted.
    "preemption_watcher": (
        ({"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}, []),
        ({"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": ""}, []),
    ),
    # The dashboard: about ten head-module processes started beside the job's local instance.
    "dashboard": (({}, ["--dashboard"]), ({}, [])),
}
"""lever -> (Ray's default, this project's setting), each (environment, extra flags); an empty value means "what the
code sets by default"."""


def overhead(setting: tuple[dict[str, str], list[str]], name: str) -> float:
    """Fixed overhead of one fresh job: wall minus the epoch's own seconds."""
    env, flags = setting
    args = [*JOB, *flags, "--output", str(common.WORK / "levers"), "--name", name]
    wall, stdout = common.run(args, env=_env(env))
    epoch_s = sum(float(s) for s in re.findall(r"img/s\s+([\d.]+)s", stdout))
    return wall - epoch_s


def _env(env: dict[str, str]) -> dict[str, str]:
    import os

    out = {k: v for k, v in os.environ.items() if k not in env}
    out.update({k: v for k, v in env.items() if v})
    return out


SWEEP_JOB = [
    "jobs/tune.py",
    "--num-samples",
    "4",
    "--epochs",
    "2",
    "--train-limit",
    "2048",
    "--val-size",
    "512",
    "--batch-size",
    "64",
    "--no-augment",
]
SWEEP_LEVERS = {
    # Tune starts a fresh trial process per trial (importing torch and mnist_ray) unless it reuses a finished one's.
    "tune_reuse_actors": (["--no-reuse-actors"], ["--reuse-actors"]),
}
"""lever -> (flags of Ray's default, flags of the lever) for the sweep job."""
NOT_KEPT = {
    "tune_reuse_actors": "an 8-trial sweep with it stalled after 5 trials (Tune waiting on its trial queue)",
}
"""Levers that paid in the A/B but are off, and why: no speed is kept at the cost of finishing."""


def _pair_summary(lever: str, before: list[float], after: list[float]) -> dict:
    """One lever's interleaved runs and their medians, and why it is off if it paid but is not kept."""
    return {
        "ray_default_s": before,
        "ours_s": after,
        "median_ray_default_s": common.median(before),
        "median_ours_s": common.median(after),
        **({"kept": False, "why_not": NOT_KEPT[lever]} if lever in NOT_KEPT else {}),
    }


def sweeps() -> None:
    """Wall time of a small 4-trial sweep (the suite's sweep test as a job), each sweep lever off and on."""
    results = {}
    for lever, (default, ours) in SWEEP_LEVERS.items():
        before, after = [], []
        for i in range(PAIRS):
            for flags, walls, tag in ((default, before, "a"), (ours, after, "b")):
                name = f"{lever}-{tag}{i}"
                shutil.rmtree(common.WORK / "levers" / name, ignore_errors=True)  # a sweep's name must be new
                args = [*SWEEP_JOB, *flags, "--output", str(common.WORK / "levers"), "--name", name]
                walls.append(round(common.run(args)[0], 2))
        results[lever] = _pair_summary(lever, before, after)
    common.save(
        "sweep_levers", {"command": "python bench/run_all.py sweep_levers  (" + " ".join(SWEEP_JOB) + ")", **results}
    )


LAYOUT_JOB = ["jobs/train.py", "--preset", "fast"]
"""The fast recipe on full MNIST: 2 epochs of 55k images on 2 workers, where the epochs are most of the wall."""


def _epochs_s(stdout: str) -> float:
    """Seconds the job's epoch lines report, summed."""
    return sum(float(s) for s in re.findall(r"img/s\s+([\d.]+)s", stdout))


def _scoring_s(channels_last: bool, chunk: int | None, folder: str) -> float:
    """Seconds to score the 10k test images on one thread, as an inference actor does (warm, model built)."""
    import time

    import numpy as np
    import torch

    from mnist_ray import data
    from mnist_ray.inference import scoring

    arrays = data.load("mnist")
    predictor = scoring.Predictor({"paths": [folder]}, threads=1)
    if not channels_last:  # the scoring as it was before 2026-11-26: NCHW weights
        predictor.model = predictor.model.to(memory_format=torch.contiguous_format)
    predictor.chunk = chunk
    batch = {"image": arrays.test_x[:1000], "label": arrays.test_y[:1000], "index": np.arange(1000)}
    predictor(batch)  # warm-up: oneDNN builds its kernels on the first call
    start = time.perf_counter()
    for i in range(0, len(arrays.test_y), 1000):
        sl = slice(i, i + 1000)
        predictor({"image": arrays.test_x[sl], "label": arrays.test_y[sl], "index": np.arange(sl.start, sl.stop)})
    return time.perf_counter() - start


def _fresh_checkpoint(folder: str) -> str:
    """A CNN checkpoint with freshly initialised weights (speed does not depend on them)."""
    from mnist_ray.settings.config import TrainConfig
    from mnist_ray.training import checkpoints, models

    model = models.build("cnn", seed=0)
    cfg = TrainConfig().to_dict()
    return str(checkpoints.save(folder, model=model, optimizer=None, config=cfg, epoch=0, history=[]))


def layout() -> None:
    """Memory layout on a CPU: NCHW (before) against channels_last, for training and for scoring.

    Training: wall and epoch seconds of ``jobs/train.py --preset fast`` with ``--no-channels-last`` and with the
    default, interleaved pairs of fresh jobs. Scoring: the evaluation's inference of 10k images on one thread,
    NCHW in batches of 1,000 (as it was) against NHWC in chunks of 256, interleaved in this process.
    """
    import tempfile

    results: dict = {}
    walls: dict[str, list[float]] = {"before": [], "ours": []}
    epochs: dict[str, list[float]] = {"before": [], "ours": []}
    for i in range(PAIRS):
        for tag, flags in (("before", ["--no-channels-last"]), ("ours", [])):
            args = [*LAYOUT_JOB, *flags, "--output", str(common.WORK / "levers"), "--name", f"layout-{tag}{i}"]
            shutil.rmtree(common.WORK / "levers" / f"layout-{tag}{i}", ignore_errors=True)
            wall, stdout = common.run(args)
            walls[tag].append(round(wall, 2))
            epochs[tag].append(round(_epochs_s(stdout), 2))
    results["channels_last: --preset fast wall"] = _pair_summary("", walls["before"], walls["ours"])
    results["channels_last: --preset fast epochs"] = _pair_summary("", epochs["before"], epochs["ours"])
    scoring: dict[str, list[float]] = {"before": [], "ours": []}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = _fresh_checkpoint(folder)
        for _ in range(PAIRS):
            scoring["before"].append(round(_scoring_s(False, None, checkpoint), 2))
            scoring["ours"].append(round(_scoring_s(True, 256, checkpoint), 2))
    results["scoring 10k images, one thread: NHWC in chunks of 256"] = _pair_summary(
        "", scoring["before"], scoring["ours"]
    )
    command = "python bench/run_all.py layout_levers  (" + " ".join(LAYOUT_JOB) + ")"
    common.save("layout_levers", {"command": command, **results})


def main() -> None:
    results = {}
    for lever, (default, ours) in LEVERS.items():
        before, after = [], []
        for i in range(PAIRS):
            before.append(round(overhead(default, f"{lever}-a{i}"), 2))
            after.append(round(overhead(ours, f"{lever}-b{i}"), 2))
        results[lever] = _pair_summary(lever, before, after)
    common.save("levers", {"command": "python bench/run_all.py levers  (" + " ".join(JOB) + ")", **results})


if __name__ == "__main__":
    main()
