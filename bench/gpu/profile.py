"""Where the Ray Train worker's step time goes against the plain loop's, on the same GPU: torch.profiler tables.

    python -m bench.gpu.profile [--dry-run]

Sets ``$MNIST_RAY_PROFILE_DIR`` (``worker.profiled``), trains 2 epochs of ``--preset gpu`` in a plain loop in
this process, then runs ``jobs/train.py --preset gpu --epochs 3`` (its own local Ray, which passes the variable
to the worker). Each profiles its second epoch. Both tables, and each epoch's images/s (the profiled one
included, slowed by the profiler), go to gpu_profile.txt in the results folder: the Ray/plain ratio's evidence.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from bench.gpu import common
from mnist_ray import data
from mnist_ray.settings.config import load_config
from mnist_ray.training import worker
from mnist_ray.training.step import SpeedOptions

DRY_FLAGS = ["--preset", "smoke", "--epochs", "3", "--num-workers", "1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU smoke: --preset smoke sizes, no GPU")
    p.add_argument("--timeout", type=float, default=90, help="kill the Ray job after this many seconds")
    args = p.parse_args()
    folder = common.fresh_dir(common.WORK / "profile")
    os.environ[worker.PROFILE_ENV] = str(folder)
    cfg = load_config("smoke" if args.dry_run else "gpu")
    cfg = replace(cfg, num_workers=1) if args.dry_run else cfg
    flags = DRY_FLAGS if args.dry_run else ["--preset", "gpu", "--epochs", "3"]
    _, plain = common.plain_fit(cfg, SpeedOptions(), data.load("mnist"), epochs=2)
    runs = common.WORK / "runs"
    common.fresh_dir(runs / "gpu_profile")
    job = common.run_job("train.py", [*flags, "--output", str(runs), "--name", "gpu_profile"], args.timeout)
    summary = [
        f"device: {common.device_name()}",
        f"plain loop, 2 epochs of --preset {flags[1]}, images/s by epoch: {[round(h['images_per_s']) for h in plain]}",
        f"ray job: python jobs/train.py {' '.join(flags)} -> exit {job['returncode']} in {job['wall_s']} s",
        *[line for _, line in job["lines"] if line.startswith("epoch")],
    ]
    parts = list(summary)
    for name in ("plain", "ray_train_rank0"):
        path = folder / f"{name}.txt"
        text = path.read_text() if path.is_file() else "(not written)"
        parts += ["", f"=== {name}: its second epoch, torch.profiler ===", text]
    common.OUT.mkdir(parents=True, exist_ok=True)
    (common.OUT / "gpu_profile.txt").write_text("\n".join(parts) + "\n")
    print("\n".join(summary), flush=True)
    print(f"[gpu_profile.txt] written ({sum(len(x) for x in parts)} characters)", flush=True)


if __name__ == "__main__":
    main()
