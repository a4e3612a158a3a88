"""The GPU path: Ray Train on one GPU and on two workers sharing it, Ray Data inference on it, bf16 autocast.

The tests in ``TestOnGpu`` are marked ``gpu`` and skip without CUDA. They start a Ray of their own that
holds the GPU (the suite's shared ``ray_session`` has none), so run them in a pytest process of their own:
``python -m pytest -m gpu tests/test_gpu.py`` (bench/gpu/run.sh does, on the GPU machine). The other tests
run anywhere and check on a CPU what the GPU path changed: that its switches leave CPU runs untouched, that
the step reads nothing back to the host, the ``gpu`` preset, and the GPU bench's own dry run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mnist_ray import data
from mnist_ray.errors import ConfigError
from mnist_ray.settings.config import RunOptions, TrainConfig, load_config
from mnist_ray.training import checkpoints, models, optim, step, trainer, worker
from mnist_ray.training.step import SpeedOptions
from tests.conftest import REPO
from tests.helpers import call

CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA device")]
# Small, but 3 epochs of augmented batches: enough for falling loss and > 80% validation accuracy.
GPU_TINY = {"epochs": 3, "train_limit": 4096, "val_size": 1024, "batch_size": 128, "lr": 4e-3}
CPU_TINY = {"epochs": 2, "train_limit": 256, "val_size": 128, "batch_size": 64, "num_workers": 1}


def cpu_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """fp32 CPU accuracy and predictions of a checkpoint on uint8 images: the reference the GPU is held to."""
    model = checkpoints.build_model(checkpoints.load(path))
    with torch.no_grad():
        predicted = torch.cat([model(data.normalize(x[i : i + 2000])).argmax(1) for i in range(0, len(x), 2000)])
    return float((predicted.numpy() == y).mean()), predicted.numpy()


def val_split(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """The validation images and labels of ``cfg``'s run."""
    arrays = data.load("mnist")
    _, val_idx = data.split_train_val(len(arrays.train_x), cfg.val_size, cfg.seed, cfg.train_limit)
    return arrays.train_x[val_idx], arrays.train_y[val_idx]


@pytest.fixture(scope="module")
def gpu_ray():
    """A local Ray holding this machine's GPU for this module, shut down after it."""
    import ray

    from mnist_ray.cluster import connection

    if ray.is_initialized():  # e.g. the suite's ray_session in the same process: it has no GPU
        if ray.cluster_resources().get("GPU", 0) < 1:
            pytest.skip("this process already runs a Ray without a GPU: run `pytest -m gpu tests/test_gpu.py` alone")
        yield ray
        return
    connection.connect(num_cpus=4)
    assert ray.cluster_resources().get("GPU", 0) >= 1, f"Ray found no GPU: {ray.cluster_resources()}"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def gpu_run(gpu_ray, tmp_path_factory):
    """A real 1-worker Ray Train run on the GPU: (config, outputs, progress reports)."""
    cfg = TrainConfig(**GPU_TINY, use_gpu=True, num_workers=1)
    epochs: list[dict] = []
    out = trainer.train(cfg, RunOptions(name="gpu1", output=str(tmp_path_factory.mktemp("gpu1"))), epochs.append)
    return cfg, out, epochs


def assert_learned_on_gpu(history: pd.DataFrame, epochs: int) -> None:
    """Every epoch ran, loss fell, accuracy is well above chance, and the worker trained on a CUDA device."""
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    assert history["val_acc"].iloc[-1] > 0.8
    assert (history["gpu_max_allocated_mb"] > 0).all()  # reported only by a worker whose shard is on CUDA


class TestOnGpu:
    pytestmark = GPU

    def test_one_gpu_worker_learns_and_its_checkpoint_loads_on_a_cpu(self, gpu_run):
        cfg, out, epochs = gpu_run
        assert_learned_on_gpu(pd.read_parquet(out.history), cfg.epochs)
        assert [m["epoch"] for m in epochs] == [1, 2, 3]
        state = checkpoints.load(out.best_checkpoint)  # map_location=cpu, weights_only=True
        assert all(t.device.type == "cpu" for t in state["state_dict"].values())
        assert state["config"]["use_gpu"] is True
        accuracy, _ = cpu_accuracy(out.best_checkpoint, *val_split(cfg))
        assert accuracy == pytest.approx(out.best_metrics["val_acc"], abs=0.01)  # fp32 CPU vs bf16 GPU

    def test_two_workers_share_the_gpu_through_gloo(self, gpu_ray, tmp_path):
        """0.5 GPU each and gloo (NCCL refuses two ranks on one GPU): shards, DDP, all-reduce, rank-0 checkpoint."""
        cfg = TrainConfig(**GPU_TINY, use_gpu=True, num_workers=2, gpus_per_worker=0.5, ddp_backend="gloo")
        out = trainer.train(cfg, RunOptions(name="gpu2", output=str(tmp_path)))
        assert_learned_on_gpu(pd.read_parquet(out.history), cfg.epochs)
        state = checkpoints.load(out.best_checkpoint)
        assert {k: state["config"][k] for k in ("num_workers", "gpus_per_worker", "ddp_backend")} == {
            "num_workers": 2,
            "gpus_per_worker": 0.5,
            "ddp_backend": "gloo",
        }
        assert not any(k.startswith("module.") for k in state["state_dict"])  # rank 0 saved the unwrapped model
        # The reported accuracy is summed over both workers' halves of the validation split, each scored by its
        # own replica; rank 0's weights alone score the whole split the same only if DDP kept the replicas equal.
        accuracy, _ = cpu_accuracy(out.best_checkpoint, *val_split(cfg))
        assert accuracy == pytest.approx(out.best_metrics["val_acc"], abs=0.01)

    def test_evaluation_job_scores_the_test_set_on_the_gpu(self, gpu_run, capsys, tmp_path):
        from mnist_ray.jobs import evaluate

        _, out, _ = gpu_run
        args = ["--checkpoint", out.best_checkpoint, "--use-gpu", "--actors", "1", "--reports", str(tmp_path)]
        result = call(evaluate.main, capsys, *args, "--run-id", "gpu")
        assert result.returncode == 0, result.stderr[-2000:]
        predictions = pd.read_parquet(tmp_path / "gpu" / "predictions.parquet").sort_values("index")
        arrays = data.load("mnist")
        accuracy, cpu_predicted = cpu_accuracy(out.best_checkpoint, arrays.test_x, arrays.test_y)
        assert len(predictions) == 10_000
        assert (predictions["predicted"].to_numpy() == cpu_predicted).mean() >= 0.995  # bf16 GPU vs fp32 CPU
        assert predictions["correct"].mean() == pytest.approx(accuracy, abs=0.005)

    def test_bf16_autocast_logits_stay_close_to_fp32(self, gpu_run):
        _, out, _ = gpu_run
        device = torch.device("cuda")
        model = checkpoints.build_model(checkpoints.load(out.best_checkpoint))
        model = step.place_model(model, device, SpeedOptions())  # channels_last, as trained
        x = data.normalize(data.load("mnist").test_x[:4096]).to(device)
        seen: list[torch.dtype] = []
        model[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
        with torch.no_grad():
            fp32 = model(x)
            with step.autocast(x):
                bf16 = model(x)
        assert seen == [torch.float32, torch.bfloat16]  # the first convolution really ran in bf16
        diff = (bf16.float() - fp32).abs()
        assert diff.max() <= 0.03 * fp32.abs().max(), (diff.max(), fp32.abs().max())
        assert diff.mean() <= 0.01 * fp32.abs().mean(), (diff.mean(), fp32.abs().mean())
        assert (bf16.argmax(1) == fp32.argmax(1)).float().mean() >= 0.995

    def test_the_gpu_step_never_waits_for_the_host(self):
        """torch's sync debug mode flags every synchronising call (item, float, blocking copies) in an epoch."""
        cfg = TrainConfig(**{**GPU_TINY, "batch_size": 256}, use_gpu=True, num_workers=1)
        x, y = worker.shard(*val_split(replace(cfg, val_size=4096)), 0, 1, torch.device("cuda"), equal=True)
        state = step.WorkerState.create(models.build("cnn", seed=0), (x, y), (x, y), cfg, speed=SpeedOptions())
        step.train_steps(state, 0, step.epoch_generator(state, 0))
        torch.cuda.synchronize()  # warm-up done: cuDNN autotuning, optimizer state, allocator
        gen = step.epoch_generator(state, 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loss_sum, correct, _ = step.train_steps(state, 1, gen)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # torch warns once that the debug mode itself is a prototype; every other such warning is a host sync.
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message) and "prototype" not in str(w.message)]
        assert syncs == [], f"{len(syncs)} host syncs in {len(x) // 256} steps: {syncs[:3]}"
        assert 0 < float(correct) <= len(x) and float(loss_sum) > 0


# ---- on a CPU ------------------------------------------------------------------------------------------------


class HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to the host or whose output shape depends on values:
    on a GPU each is a synchronisation (item/float/bool/int -> _local_scalar_dense; masks, nonzero, unique)."""

    READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "equal"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        masked = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())
        )
        if name in self.READS or masked:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_training_step_reads_nothing_back_to_the_host():
    """An epoch of steps as the GPU runs them (augmentation, fused AdamW): no value read back, no data-dependent
    shape. A CPU cannot show blocking copies; the gpu test above catches those with torch's sync debug mode."""
    cfg = TrainConfig(**CPU_TINY, label_smoothing=0.1)
    x, y = worker.shard(*val_split(replace(cfg, val_size=256)), 0, 1, torch.device("cpu"), equal=True)
    model = models.build("cnn", seed=0)
    optimizer = optim.build_optimizer(model, cfg, fused=True)  # GPU default: state steps stay on the device
    state = step.WorkerState(model, model, optimizer, (x, y), (x, y), cfg)
    with HostReads() as reads:
        loss_sum, correct, _ = step.train_steps(state, 0, torch.Generator().manual_seed(0))
    assert reads.seen == []
    assert 0 < float(correct) <= len(x) and float(loss_sum) > 0
    with HostReads() as reads:  # the detector itself: each of these would stall a GPU step
        float(loss_sum), bool(correct > 0), x[x > 0]
    assert reads.seen == ["_local_scalar_dense", "_local_scalar_dense", "index"]


def test_autocast_is_off_on_a_cpu():
    model, x = models.build("cnn", seed=0).eval(), torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
        with step.autocast(x):
            cast = model(x)
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)


def test_gpu_switches_leave_a_cpu_run_unchanged():
    """Every CUDA-only switch on or off, a CPU run computes the same numbers (the CPU figures stay reproducible).

    channels_last is the one switch that acts on a CPU: its weights change layout (model[4] is the 16-to-32 conv;
    the first conv's single input channel looks contiguous in both layouts).
    """
    cfg = TrainConfig(**CPU_TINY)
    off = SpeedOptions(fused_optimizer=False, cudnn_benchmark=False, device_rng=False)
    cpu = torch.device("cpu")
    nchw = step.place_model(models.build("cnn", seed=0), cpu, SpeedOptions(channels_last=False))
    assert nchw[4].weight.is_contiguous() and not nchw[4].weight.is_contiguous(memory_format=torch.channels_last)
    runs, arrays = [], data.load("mnist")
    for speed in (SpeedOptions(compile="default"), off):
        train_idx, val_idx = data.split_train_val(len(arrays.train_x), cfg.val_size, cfg.seed, cfg.train_limit)
        train = worker.shard(arrays.train_x[train_idx], arrays.train_y[train_idx], 0, 1, cpu, equal=True)
        val = worker.shard(arrays.train_x[val_idx], arrays.train_y[val_idx], 0, 1, cpu, equal=False)
        state = step.WorkerState.create(models.build("cnn", seed=cfg.seed), train, val, cfg, speed=speed)
        assert state.forward is state.model and not state.optimizer.defaults.get("fused")
        weight = state.model[4].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
        metrics = step.fit_epoch(state, 0)
        runs.append([metrics[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")])
        assert "gpu_max_allocated_mb" not in metrics
    assert runs[0] == runs[1]


def test_fused_option_reaches_the_optimizers_that_have_one():
    model = models.build("cnn", seed=0)
    for name in ("sgd", "adam", "adamw"):
        opt = optim.build_optimizer(model, TrainConfig(optimizer=name), fused=True)
        assert opt.defaults["fused"] is True, name
        assert not optim.build_optimizer(model, TrainConfig(optimizer=name)).defaults.get("fused")
    rmsprop = optim.build_optimizer(model, TrainConfig(optimizer="rmsprop"), fused=True)
    assert isinstance(rmsprop, torch.optim.RMSprop)  # no fused kernel in torch: the flag is ignored


def test_gpu_preset_is_one_gpu_worker_and_validates():
    from mnist_ray.jobs import train

    cfg = load_config("gpu")
    assert cfg.use_gpu and cfg.num_workers == 1 and cfg.gpus_per_worker == 1 and cfg.batch_size >= 256
    settings = train.parse(["--preset", "gpu"])
    assert settings.cfg == cfg and "1 workers x 1 CPU + 1 GPU" in train.headline(cfg, settings.opts)
    assert settings.layout.auto == {"cpus_per_worker"}  # the preset sets the GPU and the worker count
    shared = ["--preset", "gpu", "--num-workers", "2", "--gpus-per-worker", "0.5"]
    assert train.parse([*shared, "--ddp-backend", "gloo"]).cfg.ddp_backend == "gloo"
    with pytest.raises(ConfigError, match="nccl needs one GPU per worker"):
        train.parse([*shared, "--ddp-backend", "nccl"])


def test_gpu_bench_script_parses_and_its_plain_loop_runs_dry(tmp_path):
    """bench/gpu/run.sh is valid bash; the plain-loop A/B runs end to end on a CPU and writes its JSON."""
    assert subprocess.run(["bash", "-n", str(REPO / "bench/gpu/run.sh")]).returncode == 0
    env = {**os.environ, "GPU_BENCH_OUT": str(tmp_path), "GPU_BENCH_WORK": str(tmp_path / "work")}
    cmd = [sys.executable, "-m", "bench.gpu.speed", "ab", "--dry-run", "--budget-s", "0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    ab = json.loads((tmp_path / "gpu_speed.json").read_text())["ab"]
    first = ab.pop(next(iter(ab)))  # --budget-s 0: only the first variant runs
    assert first["images_per_s"] > 0 and first["batch_size"] == 128
    assert set(ab.values()) == {"skipped: out of time"}


def test_profiled_writes_a_table_only_when_asked(tmp_path, monkeypatch):
    """bench/gpu/profile.py's evidence: the profiled block's operators land in <dir>/<name>.txt, and only then."""
    x = torch.randn(64, 1, 28, 28)
    model = models.build("cnn", seed=0)
    with worker.profiled("off", active=True):  # no $MNIST_RAY_PROFILE_DIR: nothing is written anywhere
        model(x)
    monkeypatch.setenv(worker.PROFILE_ENV, str(tmp_path / "prof"))
    with worker.profiled("not_this_epoch", active=False):
        model(x)
    with worker.profiled("plain", active=True):
        model(x)
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == ["plain.txt"]
    table = (tmp_path / "prof" / "plain.txt").read_text()
    assert "aten::" in table and "Self CPU time total" in table
