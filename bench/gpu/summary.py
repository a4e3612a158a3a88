"""The GPU run's environment and its verdict on the issue's goals, from the other steps' result files.

    python -m bench.gpu.summary env          # device, driver, versions: gpu_summary.json "env"
    python -m bench.gpu.summary startup      # what a fresh process pays before training: gpu_summary.json "startup"
    python -m bench.gpu.summary goals        # each goal, its figure, met or not: gpu_summary.json "goals"

``goals`` also reads run.sh's step log ($GPU_BENCH_WORK/steps.tsv: step, exit code, seconds) and the sampled
nvidia-smi.csv (peak memory used on the GPU, the CUDA contexts of every process included).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from typing import Any

import torch

from bench.gpu import common


def env() -> dict[str, Any]:
    """What ran where: GPU, driver, CUDA, torch, Ray, Python, cores."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError as exc:
        info["ray"] = f"not importable: {exc}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
        )
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return info


def smi_peak_mib() -> float | None:
    """Largest memory.used sample in nvidia-smi.csv (MiB), if run.sh sampled it."""
    path = common.OUT / "nvidia-smi.csv"
    if not path.is_file():
        return None
    peaks = []
    for row in csv.DictReader(line.replace(", ", ",") for line in path.read_text().splitlines()):
        value = row.get("memory.used [MiB]") or row.get("memory.used")
        if value and value.strip().replace(".", "").isdigit():
            peaks.append(float(value))
    return max(peaks, default=None)


def _figure(doc: dict, *keys: str) -> Any:
    """``doc[k1][k2]...``, or None where a step did not run or wrote an error string instead."""
    for key in keys:
        doc = doc.get(key, {}) if isinstance(doc, dict) else {}
    return doc if doc != {} else None


def goals() -> list[dict[str, Any]]:
    """The issue's four goals on one H100/H200, each with the measured figures (None: not measured)."""
    jobs, speed = common.load("gpu_jobs"), common.load("gpu_speed")
    rows = []
    for name, target in (("fast", (0.990, 20)), ("default", (0.995, 60)), ("best", (0.997, 120))):
        acc, wall = _figure(jobs, name, "test_accuracy"), _figure(jobs, name, "wall_s")
        met = None if acc is None else (acc >= target[0] and wall <= target[1])
        goal = f"train job '{name}' >= {target[0]:.2%} test accuracy in <= {target[1]} s wall"
        rows.append({"goal": goal, "test_accuracy": acc, "wall_s": wall, "met": met})
    ray_rate = _figure(jobs, "default", "steady_images_per_s")
    plain_rate = _figure(speed, "ab", "preset", "images_per_s")
    ratio = round(ray_rate / plain_rate, 3) if ray_rate and plain_rate else None
    rows.append(
        {
            "goal": "Ray Train images/s >= 0.9x the plain loop on the same GPU (--preset gpu, steady state)",
            "ray_train_images_per_s": ray_rate,
            "plain_images_per_s": plain_rate,
            "ratio": ratio,
            "met": None if ratio is None else ratio >= 0.9,
        }
    )
    return rows


def steps() -> list[dict[str, Any]]:
    """run.sh's log of its steps: name, exit code (or why it was skipped), seconds."""
    path = common.WORK / "steps.tsv"
    if not path.is_file():
        return []
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r[0], "status": r[1], "seconds": float(r[2]) if len(r) > 2 else None} for r in rows]


STARTUP_PROBES = {
    "import torch": "import torch",
    "import torch + CUDA context": "import torch; torch.ones(1).to('cuda' if torch.cuda.is_available() else 'cpu')",
    "import ray": "import ray",
    "import mnist_ray.training.trainer": "import mnist_ray.training.trainer",
    "ray.init + shutdown (all CPUs)": "import ray; ray.init(address='local', include_dashboard=False); ray.shutdown()",
}
"""Fresh-process costs that every job (driver) and Train worker pays before its first step, each timed alone."""


def startup() -> dict[str, float]:
    """Wall seconds of each probe in a fresh Python: the parts of a job's start-up that are not Ray Train's."""
    times = {}
    for name, code in STARTUP_PROBES.items():
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        times[name] = round(time.perf_counter() - t0, 2) if done.returncode == 0 else f"exit {done.returncode}"
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["env", "startup", "goals"])
    args = p.parse_args()
    if args.what == "env":
        common.save("gpu_summary", "env", env())
        return
    if args.what == "startup":
        common.save("gpu_summary", "startup", startup())
        return
    common.save("gpu_summary", "steps", steps())
    common.save("gpu_summary", "nvidia_smi_peak_memory_used_mib", smi_peak_mib())
    rows = goals()
    common.save("gpu_summary", "goals", rows)
    for row in rows:
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[row["met"]]
        figures = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("goal", "met"))
        print(f"{verdict:>12}  {row['goal']}  ({figures})", flush=True)


if __name__ == "__main__":
    main()
