"""Shared by the GPU benchmarks: where results go, the device, a plain (Ray-free) training loop, a job timer.

Results are a few JSON files in ``$GPU_BENCH_OUT`` (run.sh sets it to ``${OUT:-bench/results}``), each a
dict of sections that every step updates in place, so a step killed by its timeout keeps what it wrote.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mnist_ray import data
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models, step, worker
from mnist_ray.training.step import SpeedOptions

REPO = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("GPU_BENCH_OUT", REPO / "bench" / "results"))
WORK = Path(os.environ.get("GPU_BENCH_WORK", "/tmp/mnist_ray_gpu"))
OFF = SpeedOptions(channels_last=False, fused_optimizer=False, cudnn_benchmark=False, device_rng=False, compile="")
"""Every GPU switch off: the GPU step as it was before bench/gpu (bf16 autocast stays on; it predates them)."""


def device() -> torch.device:
    """The first CUDA device, else the CPU (dry runs)."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def device_name() -> str:
    """What the figures were measured on, e.g. 'NVIDIA H100 80GB HBM3'."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()}): a dry run"


def save(file: str, section: str, value: Any, show: Any = None) -> None:
    """Set ``section`` of ``$GPU_BENCH_OUT/<file>.json`` (created with the device and date) and rewrite it.

    ``dates`` records when each section was last written: a file seeded from an earlier run keeps that run's
    sections, and the dates say which figure came from which run. Prints ``show`` (default: the value) as one
    line, for run.log.
    """
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{file}.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    doc.setdefault("device", device_name())
    doc.setdefault("date", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    doc[section] = value
    doc.setdefault("dates", {})[section] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"[{file}.json] {section}: {json.dumps(value if show is None else show)[:800]}", flush=True)


def load(file: str) -> dict:
    """A results file written by :func:`save`, or {} if that step did not run."""
    path = OUT / f"{file}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def splits(cfg: TrainConfig, arrays: data.Arrays, dev: torch.device) -> tuple[tuple, tuple]:
    """The run's train and validation splits on ``dev``, exactly as a 1-worker Ray Train run holds them."""
    train_idx, val_idx = data.split_train_val(len(arrays.train_x), cfg.val_size, cfg.seed, cfg.train_limit)
    train = worker.shard(arrays.train_x[train_idx], arrays.train_y[train_idx], 0, 1, dev, equal=True)
    val = worker.shard(arrays.train_x[val_idx], arrays.train_y[val_idx], 0, 1, dev, equal=False)
    return train, val


def plain_fit(
    cfg: TrainConfig, speed: SpeedOptions, arrays: data.Arrays, epochs: int | None = None
) -> tuple[torch.nn.Module, list[dict]]:
    """The 1-worker training run in this process, no Ray: the same functions the Ray Train worker calls.

    ``epochs`` stops early (the schedule still spans ``cfg.epochs``). Threads as a 1-CPU worker has.
    """
    models.set_cpu_threads(cfg.cpus_per_worker)
    dev = device()
    train, val = splits(cfg, arrays, dev)
    state = step.WorkerState.create(models.build(cfg.model, cfg.dropout, seed=cfg.seed), train, val, cfg, speed=speed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    history = []
    for epoch in range(epochs or cfg.epochs):
        with worker.profiled("plain", active=epoch == 1):  # only with $MNIST_RAY_PROFILE_DIR (bench.gpu.profile)
            history.append(step.fit_epoch(state, epoch))
    return state.model, history


@torch.no_grad()
def test_metrics(model: torch.nn.Module, arrays: data.Arrays, bf16: bool = False) -> dict[str, float]:
    """Accuracy and mean cross-entropy on the 10k test set (fp32 unless ``bf16``), on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    x, y = data.normalize(arrays.test_x).to(dev), torch.from_numpy(arrays.test_y).to(dev)
    with step.autocast(x, bf16):
        logits = torch.cat([model(x[i : i + 2000]).float() for i in range(0, len(x), 2000)])
    loss = torch.nn.functional.cross_entropy(logits, y)
    return {"test_accuracy": float((logits.argmax(1) == y).double().mean()), "test_loss": round(float(loss), 5)}


def checkpoint_metrics(path: Path, arrays: data.Arrays) -> dict[str, float]:
    """Test metrics of a checkpoint file, evaluated in fp32 on this machine's device."""
    model = checkpoints.build_model(checkpoints.load(path)).to(device())
    return test_metrics(model, arrays)


def steady(history: list[dict], key: str = "images_per_s") -> float:
    """Median of ``key`` over the epochs after the first (the first carries warm-up: cuDNN, allocator, compile)."""
    values = sorted(h[key] for h in (history[1:] or history))
    mid = len(values) // 2
    return float(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2)


def run_job(script: str, args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python jobs/<script> args`` start to exit; its wall seconds, exit code, and the time of each line."""
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}  # a fresh local Ray, as a user gets
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "jobs" / script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((round(time.perf_counter() - start, 2), line.rstrip()))
        print(f"  {lines[-1][0]:7.2f}s | {lines[-1][1]}", flush=True)
        if time.perf_counter() - start > timeout:
            proc.kill()
            break
    code = proc.wait()
    return {"returncode": code, "wall_s": round(time.perf_counter() - start, 2), "lines": lines}


def fresh_dir(path: Path) -> Path:
    """``path``, emptied (a run folder of the same name would otherwise be resumed, not retrained)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def dry(cfg: TrainConfig) -> TrainConfig:
    """A CPU-sized version of ``cfg`` for --dry-run: a few hundred images, 2 epochs."""
    return replace(cfg, train_limit=1024, val_size=256, epochs=2, batch_size=min(cfg.batch_size, 128), use_gpu=False)
