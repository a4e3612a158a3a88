"""Where the fixed overhead of jobs/train.py goes (P2/P3): the phases of one tiny 1-epoch run, timed in a
fresh process the way the job runs them. Three repetitions, median per phase."""

from __future__ import annotations

import json
import os
import subprocess

from bench import common

PROBE = r"""
import json, sys, tempfile, time
t0 = time.perf_counter()
import ray, torch  # noqa: F401
from mnist_ray import data
from mnist_ray.cluster import connection
from mnist_ray.training import trainer
from mnist_ray.settings.config import RunOptions, TrainConfig
t_import = time.perf_counter()
connection.connect()
t_init = time.perf_counter()
arrays = data.load("mnist")
t_data = time.perf_counter()
cfg = TrainConfig(epochs=1, train_limit=256, val_size=256, batch_size=64, augment=False)
seen = {}
def on_epoch(m):
    seen["at"], seen["epoch_s"] = time.perf_counter(), m["epoch_s"]
trainer.train(cfg, RunOptions(name="probe", output=tempfile.mkdtemp()), on_epoch, arrays)
t_end = time.perf_counter()
print(json.dumps({
    "python_imports_s": t_import - t0, "ray_init_s": t_init - t_import, "parse_verify_data_s": t_data - t_init,
    "trainer_start_to_first_epoch_s": seen["at"] - seen["epoch_s"] - t_data,
    "epoch_s": seen["epoch_s"], "after_last_report_to_outputs_written_s": t_end - seen["at"],
}))
"""


def main() -> None:
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [common.PY, "-c", PROBE],
            cwd=common.REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "RAY_ADDRESS": ""},
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    phases = {k: round(common.median([r[k] for r in runs]), 2) for k in runs[0]}
    common.save(
        "overhead",
        {
            "command": "python bench/run_all.py overhead",
            "phases_median_s": phases,
            "runs": [{k: round(v, 2) for k, v in r.items()} for r in runs],
        },
    )


if __name__ == "__main__":
    main()
