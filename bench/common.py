"""Shared helpers for the benchmarks: run a job and time it, store results, describe the machine."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORK = Path(os.environ.get("MNIST_RAY_BENCH_DIR", "/tmp/mnist_ray_bench"))
PY = sys.executable


def machine() -> str:
    """One line naming the CPU, core count, memory and the GPU if any."""
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = (
        int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
        / 2**20
    )
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {gpu}, Python {platform.python_version()}"


def run(args: list[str], env: dict | None = None) -> tuple[float, str]:
    """Run ``python <args>`` from the repo; return (wall seconds, stdout). Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.run(
        [PY, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": "", **(env or {})}
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def probe(code: str, *args: str, env: dict | None = None, timeout: float = 600):
    """Run ``python -c code args`` in a fresh process from the repo; return its last stdout line, parsed as JSON."""
    out = subprocess.run(
        [PY, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=timeout, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def save(name: str, result: dict) -> None:
    """Store one benchmark's figures as bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def evaluate(run_dir: Path, run_id: str) -> tuple[float, dict]:
    """Evaluate a run's best checkpoint with jobs/evaluate.py; return (wall seconds, metrics row)."""
    import pandas as pd

    reports = WORK / "reports"
    wall, _ = run(
        ["jobs/evaluate.py", "--run", str(run_dir), "--reports", str(reports), "--run-id", run_id, "--overwrite"]
    )
    return wall, pd.read_parquet(reports / run_id / "metrics.parquet").iloc[0].to_dict()


def train(name: str, *flags: str, env: dict[str, str] | None = None) -> tuple[float, Path, str]:
    """Train a fresh run with jobs/train.py (``env`` added to its environment); return (wall s, run folder, stdout)."""
    import shutil

    out = WORK / "runs"
    shutil.rmtree(out / name, ignore_errors=True)
    wall, stdout = run(["jobs/train.py", "--output", str(out), "--name", name, *flags], env=env)
    return wall, out / name, stdout
