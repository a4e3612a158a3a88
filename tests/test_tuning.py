"""Ray Tune sweeps of the shared training loop on 2 CPUs: outputs, sampled parameters, ASHA, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from matplotlib import image

from mnist_ray import tuning
from mnist_ray.config import RunOptions, TrainConfig, load_config
from mnist_ray.errors import ConfigError, ResourceError
from tests.conftest import REPO, TINY

pytestmark = pytest.mark.usefixtures("ray_session")
BASE = TrainConfig(**{**TINY, "epochs": 2})


def _opts(tmp_path, name, **kw) -> tuning.SweepOptions:
    return tuning.SweepOptions(run=RunOptions(name=name, output=str(tmp_path)), **kw)


def _sampled(sweep_dir: Path) -> dict[str, dict]:
    """What Tune itself recorded as each trial's parameters (params.json in each trial folder)."""
    return {
        d.name.split("_")[2] + "_" + d.name.split("_")[3]: json.loads((d / "params.json").read_text())
        for d in sweep_dir.glob("run_trial_*")
        if (d / "params.json").is_file()
    }


def test_sweep_of_four_trials_on_two_cpus(tmp_path):
    space = tuning.SearchSpace(lr_min=1e-3, lr_max=1e-2, optimizers=("adam", "sgd"))
    out = tuning.sweep(BASE, space, _opts(tmp_path, "four", num_samples=4))
    trials = pd.read_parquet(out["trials"])
    assert len(trials) == 4 and trials["error"].isna().all()
    sampled = _sampled(tmp_path / "four")
    assert set(trials["trial_id"]) == set(sampled)
    for row in trials.itertuples():
        assert row.lr == sampled[row.trial_id]["lr"] and row.optimizer == sampled[row.trial_id]["optimizer"]
        assert 1e-3 <= row.lr <= 1e-2 and row.optimizer in {"adam", "sgd"} and row.model == "cnn"
        assert 1 <= row.epochs_completed <= 2 and row.stopped_early == (row.epochs_completed < 2)
        assert Path(row.checkpoint_path).is_dir() and row.wall_s > 0
    best = load_config("default", str(out["best_config"]))  # accepted by jobs/train.py --config
    top = trials.iloc[0]
    assert (best.lr, best.optimizer) == (top.lr, top.optimizer) and top.best_val_acc == trials["best_val_acc"].max()
    assert image.imread(out["plot"]).shape[1] > 400 and out["best_checkpoint"].is_file()


def test_asha_stops_a_poor_trial_early(tmp_path):
    """Sequential grid: a good lr reaches rung 1 first, so a hopeless lr (1e-6) falls below the cutoff."""
    space = tuning.SearchSpace(lr_values=(3e-3, 1e-6), optimizers=("adam",))
    out = tuning.sweep(BASE, space, _opts(tmp_path, "asha", num_samples=1, max_concurrent=1))
    trials = pd.read_parquet(out["trials"]).set_index("lr")
    assert trials.loc[1e-6, "stopped_early"] and trials.loc[1e-6, "epochs_completed"] == 1
    assert not trials.loc[3e-3, "stopped_early"] and trials.loc[3e-3, "epochs_completed"] == 2
    assert out["stopped_early"] == 1


def test_impossible_layout_fails_fast():
    with pytest.raises(ResourceError, match="3 workers per trial need 3 CPUs but the cluster has 2"):
        tuning.plan(BASE, trials=4, workers=3)
    assert tuning.plan(BASE, trials=4, workers=None)[1] == 2  # 2 CPUs: two 1-worker trials at once
    with pytest.raises(ConfigError, match="pass --resume|no sweep to resume"):
        tuning.make_tuner(BASE, tuning.SearchSpace(), _opts(Path("/tmp/none-such"), "x", resume=True), 1, print)


def _tune_cmd(tmp_path, *extra):
    return [
        sys.executable,
        str(REPO / "jobs" / "tune.py"),
        "--output",
        str(tmp_path),
        "--name",
        "resumable",
        "--epochs",
        "1",
        "--train-limit",
        "1024",
        "--val-size",
        "256",
        "--batch-size",
        "64",
        "--no-augment",
        "--num-samples",
        "2",
        "--max-concurrent",
        "1",
        "--optimizers",
        "adam",
        *extra,
    ]


def _wait_for_terminated_trial(sweep: Path, proc, timeout=240) -> None:
    """Block until Tune's saved experiment state records a finished trial."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any("TERMINATED" in f.read_text(errors="ignore") for f in sweep.glob("experiment_state-*.json")):
            return
        time.sleep(1)
    raise AssertionError("no trial finished before the deadline")


def test_resume_after_killed_driver_skips_finished_trials(ray_session, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    first = subprocess.Popen(_tune_cmd(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _wait_for_terminated_trial(tmp_path / "resumable", first)
    first.send_signal(signal.SIGKILL)
    before = first.communicate()[0]
    finished = {ln.split()[2].rstrip(":") for ln in before.splitlines() if ln.startswith("trial ")}
    assert finished and not (tmp_path / "resumable" / "trials.parquet").exists()

    # --epochs 4 on the resume command is ignored: the sweep continues as it was defined (sweep.json)
    resume = _tune_cmd(tmp_path, "--resume", "--epochs", "4")
    again = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rerun = {ln.split()[2].rstrip(":") for ln in again.stdout.splitlines() if ln.startswith("trial ")}
    assert not rerun & finished  # finished trials were not run again
    trials = pd.read_parquet(tmp_path / "resumable" / "trials.parquet")
    assert len(trials) == 2 and (trials["epochs_completed"] == 1).all() and not trials["stopped_early"].any()
