"""Ray Tune sweeps of the shared training loop on 2 CPUs: outputs, sampled parameters, MLflow, ASHA, resume."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from matplotlib import image
from ray import tune as tune_lib

from mnist_ray.errors import ConfigError, ResourceError
from mnist_ray.files import storage
from mnist_ray.files.folders import RunFolder
from mnist_ray.jobs import tune
from mnist_ray.reports import mlflow_store, tracking
from mnist_ray.settings.config import RunOptions, TrainConfig, load_config
from mnist_ray.training import search, sweep
from tests import helpers
from tests.conftest import REPO, TINY
from tests.helpers import call, cluster_env, mlflow_artifacts, mlflow_client, mlflow_history
from tests.s3 import make_bucket

pytestmark = pytest.mark.usefixtures("ray_session")
# Guard only: a sweep that does not end within SWEEP_TIMEOUT_S fails its test instead of hanging the suite. The Tune
# deadlock these sweeps once met (a trial's last report still in flight when its function returned) is fixed in
# mnist_ray.training.sweep.run_trial and reproduced by the slow-driver test below; no test is rerun. These sweeps
# take 28-51 s here (a 4-trial sweep job with its own Ray: 45-64 s), so the limit is 3x the slowest.
SWEEP_TIMEOUT_S = 150
BASE = TrainConfig(**{**TINY, "epochs": 2})
TINY_FLAGS = ["--epochs", "2", "--train-limit", "2048", "--val-size", "512", "--batch-size", "64", "--no-augment"]


def _sweep(tmp_path, name: str, space: search.SearchSpace, mlflow_uri: str = "", **options) -> sweep.SweepResult:
    run = RunOptions(name=name, output=str(tmp_path), mlflow_uri=mlflow_uri)
    return sweep.sweep(search.preflight(BASE, space, search.SweepOptions(**options), run), run)


def _sampled(sweep_dir: Path) -> dict[str, dict]:
    """What Tune itself recorded as each trial's parameters (params.json in each trial folder)."""
    return {
        d.name.split("_")[2] + "_" + d.name.split("_")[3]: json.loads((d / "params.json").read_text())
        for d in sweep_dir.glob("run_trial_*")
        if (d / "params.json").is_file()
    }


@pytest.mark.slow
@pytest.mark.timeout(SWEEP_TIMEOUT_S, method="signal")
def test_sweep_of_four_trials_on_two_cpus_tracked_in_mlflow(tmp_path):
    """Four sampled trials, two at a time, with MLflow on (one sweep for both: each costs ~40 s)."""
    space = search.SearchSpace(lr_min=1e-3, lr_max=1e-2, optimizers=("adam", "sgd"))
    uri = mlflow_store.check(f"sqlite:///{tmp_path}/mlflow.db")
    out = _sweep(tmp_path, "four", space, mlflow_uri=uri, num_samples=4)
    trials = pd.read_parquet(out.trials)
    assert len(trials) == 4 and trials["error"].isna().all()
    sampled = _sampled(tmp_path / "four")
    assert set(trials["trial_id"]) == set(sampled)
    for row in trials.itertuples():
        assert row.lr == sampled[row.trial_id]["lr"] and row.optimizer == sampled[row.trial_id]["optimizer"]
        assert 1e-3 <= row.lr <= 1e-2 and row.optimizer in {"adam", "sgd"} and row.model == "cnn"
        assert 1 <= row.epochs_completed <= 2 and row.stopped_early == (row.epochs_completed < 2)
        assert Path(row.checkpoint_path).is_dir() and row.wall_s > 0
    best = load_config("default", out.best_config)  # accepted by jobs/train.py --config
    top = trials.iloc[0]
    assert (best.lr, best.optimizer) == (top.lr, top.optimizer) and top.best_val_acc == trials["best_val_acc"].max()
    # the recipe, not the sweep's shortcuts: train.py's own epochs, data and layout apply
    saved = json.loads(Path(out.best_config).read_text())
    assert not {"epochs", "train_limit", "num_workers"} & set(saved) and best.epochs == 12 and best.train_limit == 0
    assert saved["batch_size"] == 64 and saved["val_size"] == 512
    assert image.imread(out.plot).shape[1] > 400 and Path(out.best_checkpoint).is_file()
    _check_tracked_sweep(uri, out, trials, tmp_path / "four")


def _check_tracked_sweep(uri: str, out: sweep.SweepResult, trials: pd.DataFrame, sweep_dir: Path) -> None:
    """Ray Tune's MLflowLoggerCallback: one run per trial (config, each epoch, Tune's files); a run of the sweep."""
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(tracking.sweep_experiment(sweep_dir.name)).experiment_id
    runs = client.search_runs([experiment])
    logged = {float(r.data.params["lr"]): r for r in runs if r.data.tags.get("mnist_ray.kind") == "trial"}
    assert sorted(logged) == sorted(trials["lr"])
    for row in trials.itertuples():
        trial = logged[row.lr]
        assert trial.info.status == "FINISHED" and trial.data.params["optimizer"] == row.optimizer
        assert len(mlflow_history(client, trial.info.run_id, "val_acc")) == row.epochs_completed
        files = mlflow_artifacts(client, trial.info.run_id)
        assert {"params.json", "result.json"} <= files and any(f.startswith("events.out.tfevents") for f in files)
    (summary,) = [r for r in runs if r.data.tags.get("mnist_ray.kind") == "sweep"]
    assert summary.info.run_id == out.mlflow_run_id and summary.info.run_name == sweep_dir.name
    assert summary.data.metrics["best_val_acc"] == pytest.approx(out.best_val_acc)
    assert summary.data.params["lr"] == str(json.loads(Path(out.best_config).read_text())["lr"])
    expected = {"trials.parquet", "tune.png", "best.json", "best_checkpoint/model.pt"}
    assert mlflow_artifacts(client, summary.info.run_id) == expected
    assert json.loads((sweep_dir / RunFolder.tracking).read_text())["run_id"] == out.mlflow_run_id
    events = list(sweep_dir.glob("run_trial_*/events.out.tfevents.*"))  # TensorBoard's, as the README says
    assert len(events) == len(trials)


@pytest.mark.slow
@pytest.mark.timeout(SWEEP_TIMEOUT_S, method="signal")
def test_a_sweep_job_on_s3_whose_asha_stops_a_poor_trial_early(capsys):
    """The tune job with every output on s3:// (moto's server), its best config read back from there; and ASHA.

    A sequential grid: a good lr reaches rung 1 first, so a hopeless lr (1e-6) falls below the cutoff. (One sweep
    for both: each costs ~25 s.)
    """
    sweeps = f"{make_bucket('mnist-ray-tests')}/{uuid.uuid4().hex[:8]}/sweeps"
    args = [*TINY_FLAGS, "--output", sweeps, "--name", "asha", "--lr-values", "3e-3", "1e-6", "--optimizers", "adam"]
    result = call(tune.main, capsys, *args, "--num-samples", "1", "--max-concurrent", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = f"{sweeps}/asha"
    trials = pd.read_parquet(io.BytesIO(storage.read_bytes(f"{sweep}/trials.parquet"))).set_index("lr")
    assert trials.loc[1e-6, "stopped_early"] and trials.loc[1e-6, "epochs_completed"] == 1
    assert not trials.loc[3e-3, "stopped_early"] and trials.loc[3e-3, "epochs_completed"] == 2
    assert "2 trials in " in result.stdout and "1 stopped early by ASHA" in result.stdout
    assert storage.is_file(f"{sweep}/{RunFolder.best_checkpoint}") and storage.is_file(f"{sweep}/tune.png")
    best = load_config("default", f"{sweep}/best.json")  # what train.py --config s3://.../best.json reads
    assert (best.lr, best.optimizer, best.batch_size) == (3e-3, "adam", 64)


def test_impossible_layout_fails_fast():
    with pytest.raises(ResourceError, match="3 workers per trial need 3 CPUs but the cluster has 2"):
        sweep.fit_layout(BASE, trials=4, workers=3)
    assert sweep.fit_layout(BASE, trials=4, workers=None)[1] == 2  # 2 CPUs: two 1-worker trials at once
    with pytest.raises(ConfigError, match="batch size 63 must be a multiple"):
        sweep.fit_layout(BASE.with_updates(batch_size=63, num_workers=1), trials=1, workers=2)


def test_resume_or_new_name_is_checked_before_ray(tmp_path):
    run = RunOptions(name="x", output=str(tmp_path))
    with pytest.raises(ConfigError, match="no sweep to resume"):
        search.preflight(BASE, search.SearchSpace(), search.SweepOptions(resume=True), run)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "sweep.json").write_text("{}")
    with pytest.raises(ConfigError, match="exists: pass --resume"):
        search.preflight(BASE, search.SearchSpace(), search.SweepOptions(), run)
    with pytest.raises(ConfigError, match="sweep.json is damaged"):
        search.preflight(BASE, search.SearchSpace(), search.SweepOptions(resume=True), run)


def test_a_resumed_sweep_keeps_its_reuse_actors_choice(tmp_path):
    """--reuse-actors is saved in sweep.json with the other options; a spec from before the flag means off."""
    run = RunOptions(name="saved", output=str(tmp_path))
    spec = {"base": BASE.to_dict(), "space": {}, "workers": 1, "sweep": {"num_samples": 3, "reuse_actors": True}}
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "sweep.json").write_text(json.dumps(spec))
    plan = search.preflight(BASE, search.SearchSpace(), search.SweepOptions(resume=True), run)
    assert plan.options.reuse_actors and plan.options.num_samples == 3 and plan.options.resume
    del spec["sweep"]["reuse_actors"]
    (tmp_path / "saved" / "sweep.json").write_text(json.dumps(spec))
    plan = search.preflight(BASE, search.SearchSpace(), search.SweepOptions(resume=True, reuse_actors=True), run)
    assert not plan.options.reuse_actors  # the saved definition wins over today's flags


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr_max": float("inf")}, "lr_max must be a finite number, got inf: pass a real value to --lr-max"),
        ({"lr_values": (float("nan"), 1.0)}, "lr_values must be a finite number"),
        ({"lr_min": 0.0}, r"lr_min must be in \(0, inf\), got 0: pass --lr-min"),
        ({"lr_min": 0.1, "lr_max": 0.01}, "minimum must not exceed"),
        ({"optimizers": ("lion",)}, "unknown optimizers 'lion'"),
        ({"optimizers": ()}, "--optimizers needs at least one value"),
        ({"batch_sizes": (0,)}, r"batch_sizes must be in \[1, 60000\]"),
    ],
)
def test_bad_search_spaces_are_refused(space, message):
    with pytest.raises(ConfigError, match=message):
        search.SearchSpace(**space)
    with pytest.raises(ConfigError, match="reduction_factor must be a finite number"):
        search.SweepOptions(reduction_factor=float("nan"))


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


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_says_so_and_resume_skips_finished_trials(tmp_path, ray_session):
    # The stopped driver starts its own local Ray, as a user's sweep does: a stopped Tune driver can leave a trial's
    # placement group behind (Ray Train's cleaner races the stop), which must not starve the suite's shared Ray.
    # The resume then runs on the suite's Ray (one local Ray's start and stop less).
    env = cluster_env(RAY_ADDRESS="local")
    first = subprocess.Popen(_tune_cmd(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_terminated_trial(tmp_path / "resumable", first)
    first.send_signal(signal.SIGTERM)  # Tune saves the sweep's state, then the job says how to continue
    before, err = first.communicate(timeout=120)
    helpers.assert_stopped_cleanly(
        helpers.JobResult(first.returncode, before, err),
        "SIGTERM",
        "rerun with --resume to continue the sweep (finished trials are kept)",
    )
    finished = {ln.split()[2].rstrip(":") for ln in before.splitlines() if ln.startswith("trial ")}
    assert finished and not (tmp_path / "resumable" / "trials.parquet").exists()

    # --epochs 4 on the resume command is ignored: the sweep continues as it was defined (sweep.json)
    resume = _tune_cmd(tmp_path, "--resume", "--epochs", "4")
    again = subprocess.run(resume, capture_output=True, text=True, env=cluster_env(ray_session), timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rerun = {ln.split()[2].rstrip(":") for ln in again.stdout.splitlines() if ln.startswith("trial ")}
    assert not rerun & finished  # finished trials were not run again
    trials = pd.read_parquet(tmp_path / "resumable" / "trials.parquet")
    assert len(trials) == 2 and (trials["epochs_completed"] == 1).all() and not trials["stopped_early"].any()


class _SlowDriver(tune_lib.Callback):
    """Holds the Tune driver for ``delay_s`` after a trial's first result, as a loaded driver (or a long-lived
    cluster's busy one) would: meanwhile the trial's Train run reports its last epoch and its function returns."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("epoch") == 1:
            time.sleep(self.delay_s)


@pytest.mark.slow
@pytest.mark.timeout(240, method="signal")
def test_a_trial_whose_last_report_waits_on_a_slow_driver_does_not_hang_the_sweep(tmp_path):
    """The Tune 2.60 deadlock the suite used to rerun around, made deterministic on the suite's shared Ray.

    Ray Train's TuneReportCallback hands each report to the trial through an inter-actor queue, which the trial's
    ``step`` drains into its own result queue (size 1). When the trial function returns first, Tune's wrapper puts
    its closing result in that queue, and ``step`` then blocks forever putting the last report behind it.
    """
    run = RunOptions(name="slowdriver", output=str(tmp_path))
    space = search.SearchSpace(lr_values=(3e-3,), optimizers=("adam",))
    plan = search.preflight(BASE, space, search.SweepOptions(num_samples=1, max_concurrent=1), run)
    out = sweep.sweep(plan, run, callbacks=(_SlowDriver(delay_s=25.0),))
    trials = pd.read_parquet(out.trials)
    assert len(trials) == 1 and trials["epochs_completed"].tolist() == [2]
