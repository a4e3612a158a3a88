"""Where the test suite leaves the 2 cores idle: the suite in file order, with the machine's idle share sampled.

    python -m bench.suite_idle                 # one pytest process
    python -m bench.suite_idle --processes 2   # two processes (pytest-xdist), one test file at a time each

Runs ``pytest -q -p no:randomly --durations=0`` while sampling /proc/stat every 0.5 s. With one process it then
lays the tests end to end in collection order (setup + call + teardown each, from the durations) and gives each
test of 4 s or more its mean idle share: idle time is what a second test process could use at best. With several
it records the wall time, the idle share and each file's summed test time. Results: bench/results/suite_idle.json
(one process) or suite_idle_n2.json. About 10-13 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench import common

PYTEST = ["-m", "pytest", "-q", "-p", "no:randomly"]
DURATION = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S+)")


def cpu_ticks() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[3] + fields[4], sum(fields)


def sample_idle(stop: threading.Event, timeline: list[tuple[float, float]], every: float = 0.5) -> None:
    """Append (seconds since start, idle share of the last interval) until ``stop`` is set."""
    start, (idle0, total0) = time.monotonic(), cpu_ticks()
    while not stop.wait(every):
        idle1, total1 = cpu_ticks()
        timeline.append((time.monotonic() - start, (idle1 - idle0) / max(1, total1 - total0)))
        idle0, total0 = idle1, total1


def per_test(order: list[str], seconds: dict[str, float], timeline: list, offset: float) -> list[dict]:
    """Each test's window (laid end to end from ``offset``) and the mean idle share sampled inside it."""
    rows, at = [], offset
    for test in order:
        span = seconds.get(test, 0.0)
        inside = [idle for t, idle in timeline if at <= t < at + span]
        if span >= 4 and inside:
            rows.append({"test": test, "seconds": round(span, 1), "idle": round(sum(inside) / len(inside), 2)})
        at += span
    return rows


def per_file(seconds: dict[str, float]) -> dict[str, float]:
    """Summed setup + call + teardown seconds of each test file, slowest first."""
    files: dict[str, float] = defaultdict(float)
    for test, span in seconds.items():
        files[test.split("::", 1)[0]] += span
    return {f: round(s, 1) for f, s in sorted(files.items(), key=lambda kv: -kv[1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--processes", type=int, default=1, help="pytest processes (make test uses 1)")
    processes = parser.parse_args(argv).processes
    pytest = PYTEST + (["-n", str(processes), "--dist", "loadfile"] if processes > 1 else [])
    collected = subprocess.run(
        [common.PY, *pytest, "--collect-only"], cwd=common.REPO, capture_output=True, text=True, check=True
    )
    order = [ln.strip() for ln in collected.stdout.splitlines() if "::" in ln]
    stop, timeline = threading.Event(), []
    sampler = threading.Thread(target=sample_idle, args=(stop, timeline), daemon=True)
    sampler.start()
    started = time.monotonic()
    run = subprocess.run([common.PY, *pytest, "--durations=0"], cwd=common.REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    stop.set()
    sampler.join()
    seconds: dict[str, float] = defaultdict(float)
    for line in run.stdout.splitlines():
        if match := DURATION.match(line):
            seconds[match.group(2)] += float(match.group(1))
    offset = max(0.0, wall - sum(seconds.values()))  # collection and start-up come before the first test
    rows = per_test(order, seconds, timeline, offset) if processes == 1 else []
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    failed = [ln for ln in run.stdout.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    common.save(
        "suite_idle" if processes == 1 else f"suite_idle_n{processes}",
        {
            "command": f"python -m bench.suite_idle --processes {processes}  ({' '.join(pytest[2:])} --durations=0)",
            "pytest": summary,
            "failed": failed,
            "wall_s": round(wall, 1),
            "mean_idle": round(sum(idle for _, idle in timeline) / max(1, len(timeline)), 3),
            "idle_core_s": round((os.cpu_count() or 1) * sum(idle for _, idle in timeline) * 0.5, 1),
            "files": per_file(seconds),
            "tests_of_4s_or_more": sorted(rows, key=lambda r: -r["seconds"]),
        },
    )


if __name__ == "__main__":
    main()
