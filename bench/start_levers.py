"""Three start-up levers of a fresh job's local Ray, one kept: each an A/B of interleaved fresh processes.

    python -m bench.start_levers                  # all three
    python -m bench.start_levers prestart         # or any of: coordinator runtime_env prestart

- ``coordinator`` (kept: ``connection.connect`` does it): Ray Train's controller asks Ray Data's
  ``AutoscalingCoordinator`` (a detached actor, a new process) for resources and waits up to 5 s; Ray Data's
  executor uses it too. The lever creates it from the driver right after ``ray.init`` (an internal API); Ray's
  default is ``MNIST_RAY_EARLY_COORDINATOR=0``. Per pair: the first evaluation call and the first tiny fit of a
  fresh process, each in its own process.
- ``runtime_env``: Train's actors never take Ray's prestarted workers because their runtime env is never empty. The
  lever gives the driver's job the controller's runtime env, so that the two hashes match. Per pair: three tiny
  fits in one fresh process.
- ``prestart``: Ray prestarts a Python worker per CPU when the first driver connects; only the evaluation's tasks
  use them. The lever turns that off (``RAY_prestart_worker_first_driver=0``). Per pair: the whole smoke train job
  and the whole evaluation job.

3 pairs each; the default run first in every pair. Results: bench/results/start_levers.json. About 15 minutes on
2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

from bench import common
from mnist_ray.ray_workarounds.autoscaling_coordinator import EARLY_COORDINATOR_ENV

PAIRS = 3

PROBE = r"""
import json, os, sys, tempfile, time
lever, what, checkpoint = sys.argv[1:4]
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
from mnist_ray.cluster import connection
from mnist_ray.inference import evaluation
from mnist_ray.training import trainer
from mnist_ray.settings.config import RunOptions, TrainConfig
from tests.conftest import TINY

if lever == "runtime_env":
    import functools, ray
    from ray.train.v2._internal import constants as c
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", connection.HEALTH_CHECK_INTERVAL_S)
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    env_vars = c.get_env_vars_to_propagate()  # what the controller's runtime env holds (DataParallelTrainer)
    warn = c.RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
    env_vars.setdefault(warn, c.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE)
    ray.init = functools.partial(ray.init, runtime_env={"env_vars": env_vars})
connection.connect(num_cpus=2, dashboard=False)  # starts the coordinator unless MNIST_RAY_EARLY_COORDINATOR=0
spans = []
for i in range(3 if what == "fits" else 1):
    start = time.perf_counter()
    if what == "eval":
        evaluation.evaluate_to_report(checkpoint, tempfile.mkdtemp(), "lever")
    else:
        trainer.train(TrainConfig(**TINY), RunOptions(name=f"lever{i}", output=tempfile.mkdtemp()))
    spans.append(round(time.perf_counter() - start, 2))
print(json.dumps(spans))
"""


def probe(lever: str, what: str, checkpoint: str) -> list[float]:
    """Seconds of each evaluation call or fit in one fresh process with its own local Ray; lever "none" or one."""
    with tempfile.TemporaryDirectory(prefix="rsl", dir="/tmp") as tmp:  # short: Ray's socket paths have a limit
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        env[EARLY_COORDINATOR_ENV] = "1" if lever == "coordinator" else "0"  # runtime_env: without it
        return common.probe(PROBE, lever, what, checkpoint, env=env)


def job(what: str, name: str, lever: bool, checkpoint_run: str) -> float:
    """Wall seconds of one whole job (``train`` or ``evaluate``), Ray's prestarted workers on (default) or off."""
    import shutil

    if what == "train":
        shutil.rmtree(common.WORK / "levers" / name, ignore_errors=True)  # a fresh run, never a resume
        args = ["jobs/train.py", "--preset", "smoke", "--epochs", "1", "--output", str(common.WORK / "levers")]
        args += ["--name", name]
    else:
        args = ["jobs/evaluate.py", "--run", checkpoint_run, "--reports", str(common.WORK / "reports")]
        args += ["--run-id", name, "--overwrite"]
    env = {"RAY_prestart_worker_first_driver": "0"} if lever else {}
    return round(common.run(args, env=env)[0], 2)


MEASURES = {
    "coordinator": {"first evaluation call": "eval", "first tiny fit": "fit"},
    "runtime_env": {"three tiny fits in one Ray": "fits"},
    "prestart": {"train job (smoke, 1 epoch)": "train", "evaluation job": "evaluate"},
}
"""lever -> {what is timed: how} (a probe's ``what``, or the job for ``prestart``)."""
WHY_NOT = {
    "runtime_env": "inside the spread (an earlier probe of the same change: no gain), and it would give every job a "
    "runtime env of its own",
    "prestart": "inside the spread, one way for the train job and the other for the evaluation",
}
"""Why a lever is off."""


def main(levers: list[str]) -> None:
    run_dir = common.WORK / "runs" / "cnn_default"
    if not (run_dir / "best_checkpoint" / "model.pt").is_file():
        common.train("cnn_default")
    checkpoint = str(run_dir / "best_checkpoint" / "model.pt")
    path = common.RESULTS / "start_levers.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for lever in levers or list(MEASURES):
        runs = {label: {"ray_default_s": [], "lever_s": []} for label in MEASURES[lever]}
        for i in range(PAIRS):
            for label, what in MEASURES[lever].items():
                for side, on in (("ray_default_s", False), ("lever_s", True)):
                    if lever == "prestart":
                        value = job(what, f"prestart-{i}-{int(on)}", on, str(run_dir))
                    else:
                        value = probe(lever if on else "none", what, checkpoint)
                    runs[label][side].append(value)
                    print(lever, label, side, value, file=sys.stderr, flush=True)
        results[lever] = {"runs": runs, "kept": lever == "coordinator"}
    for key in ("machine", "date", "command"):
        results.pop(key, None)
    common.save("start_levers", {"command": "python -m bench.start_levers", **results})


if __name__ == "__main__":
    main(sys.argv[1:])
