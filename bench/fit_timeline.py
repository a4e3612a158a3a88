"""What one ``fit()`` starts, and when: the process chain behind Ray Train's ~11 s before a tiny run's first
epoch, and the time of that fit with 1 worker against 2 (the suite's unit of cost, issue 14).

A fresh process starts its own local Ray (2 CPUs, in a temporary ``RAY_TMPDIR`` so its logs are this run's
only), runs the suite's tiny config three times per worker count, and prints the fit start times. Each Ray
process's first log line (``python-core-worker-*.log``) and its actor class (``worker-*.out``) then give
when each actor process of the first fit came up, relative to that fit's start; /proc/stat, how much of the
machine's CPU time sat idle meanwhile. Results:
bench/results/fit_timeline.json.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path

from bench import common

PROBE = r"""
import json, sys, tempfile, time
from mnist_ray.cluster import connection
from mnist_ray.training import trainer
from mnist_ray.settings.config import RunOptions, TrainConfig
from tests.conftest import TINY
connection.connect(num_cpus=2)
time.sleep(3)  # the instance's prestarted workers settle before the first fit
for workers in (2, 1):
    for i in range(3):
        t, marks = time.time(), []
        opts = RunOptions(name=f"w{workers}-{i}", output=tempfile.mkdtemp())
        cfg = TrainConfig(**{**TINY, "num_workers": workers})
        trainer.train(cfg, opts, on_epoch=lambda m: marks.append(time.time()))
        print(json.dumps({"workers": workers, "start": t, "first_epoch_s": marks[0] - t, "fit_s": time.time() - t}))
"""


def cpu_ticks() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


FIRST_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def actor_starts(logs: Path, since: float, until: float) -> list[dict]:
    """Actor processes whose first log line falls in [since, until): class name and seconds after ``since``."""
    starts = []
    for log in logs.glob("python-core-worker-*.log"):
        pid = log.stem.rsplit("_", 1)[-1]
        first = FIRST_LINE.match(log.read_text(errors="replace"))
        out = next(logs.glob(f"worker-*-{pid}.out"), None)
        name = re.search(r":actor_name:(\w+)", out.read_text(errors="replace")) if out else None
        if first and name:
            at = datetime.strptime(first.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if since <= at < until:
                starts.append({"actor": name.group(1), "process_up_s": round(at - since, 2)})
    return sorted(starts, key=lambda s: s["process_up_s"])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rtl", dir="/tmp") as tmp:  # short: Ray's socket paths have a limit
        env = {**os.environ, "RAY_ADDRESS": "", "RAY_TMPDIR": tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        idle0, total0 = cpu_ticks()
        proc = subprocess.run(
            [common.PY, "-c", PROBE], cwd=common.REPO, capture_output=True, text=True, env=env, check=True
        )
        idle1, total1 = cpu_ticks()
        fits = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        logs = next(Path(tmp).glob("ray/session_2*/logs"))
        chain = actor_starts(logs, fits[0]["start"], fits[1]["start"])
    by_workers = {
        w: {
            "fit_s": [round(f["fit_s"], 1) for f in fits if f["workers"] == w],
            "first_epoch_done_s": [round(f["first_epoch_s"], 1) for f in fits if f["workers"] == w],
        }
        for w in (2, 1)
    }
    common.save(
        "fit_timeline",
        {
            "command": "python bench/run_all.py fit_timeline  (tiny config of tests/conftest.py, 3 fits per layout)",
            "first_fit_actor_processes": chain,
            "cpu_idle_fraction": round((idle1 - idle0) / (total1 - total0), 2),  # the whole probe, Ray's start too
            "median_fit_s": {w: common.median(v["fit_s"]) for w, v in by_workers.items()},
            **{f"{w}_workers": v for w, v in by_workers.items()},
        },
    )


if __name__ == "__main__":
    main()
