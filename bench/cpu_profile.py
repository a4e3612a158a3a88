"""Where the CPU goes during Ray Train on 2 cores (the profile behind the P1 ratio): per-process CPU seconds,
summed by process kind, over a 15 s window in the middle of a 2-worker training epoch."""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from pathlib import Path

from bench import common

TICK = os.sysconf("SC_CLK_TCK")
WINDOW_S = 15.0


def cpu_by_pid() -> dict[int, tuple[str, float]]:
    """(name, CPU seconds so far) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            out[int(stat.parent.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
        except (OSError, ValueError, IndexError):
            continue
    return out


def main() -> None:
    flags = [
        "--no-augment",
        "--epochs",
        "3",
        "--train-limit",
        "40000",
        "--val-size",
        "1000",
        "--name",
        "cpu_profile",
        "--output",
        str(common.WORK / "runs"),
    ]
    proc = subprocess.Popen(
        [common.PY, "jobs/train.py", *flags],
        cwd=common.REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    for line in proc.stdout:  # wait until the first epoch is done: the run is in steady state
        if line.startswith("epoch   1/3"):
            break
    before, start = cpu_by_pid(), time.perf_counter()
    time.sleep(WINDOW_S)
    after, wall = cpu_by_pid(), time.perf_counter() - start
    proc.communicate()
    shares: dict[str, float] = defaultdict(float)
    for pid, (name, cpu) in after.items():
        shares[name] += cpu - before.get(pid, (name, 0.0))[1]
    total = 2 * wall  # two cores
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:10]
    common.save(
        "cpu_profile",
        {
            "command": "python bench/run_all.py cpu_profile  (jobs/train.py " + " ".join(flags[:8]) + ")",
            "window_s": round(wall, 1),
            "cpu_share_of_2_cores": {name: round(cpu / total, 3) for name, cpu in top if cpu > 0},
        },
    )


if __name__ == "__main__":
    main()
