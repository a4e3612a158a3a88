"""`make bench`: run every benchmark (or those named: accuracy, accuracy:NAME,..., throughput, evaluation,
sweep, overhead, cpu_profile, levers, sweep_levers, layout_levers, fit_timeline, throughput_levers), then render
docs/benchmarks.md.

About 40 minutes on 2 cores; run nothing else meanwhile."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import accuracy, cpu_profile, evaluation, fit_timeline, levers, overhead, render, sweep, throughput  # noqa: E402

BENCHES = {
    "accuracy": accuracy.main,
    "throughput": throughput.main,
    "throughput_levers": throughput.levers,
    "evaluation": evaluation.main,
    "sweep": sweep.main,
    "overhead": overhead.main,
    "cpu_profile": cpu_profile.main,
    "levers": levers.main,
    "sweep_levers": levers.sweeps,
    "layout_levers": levers.layout,
    "fit_timeline": fit_timeline.main,
}


def main(names: list[str]) -> None:
    for name in names or list(BENCHES):
        if name == "accuracy":
            accuracy.main([])
        elif name.startswith("accuracy:"):
            accuracy.main(name.split(":", 1)[1].split(","))
        else:
            BENCHES[name]()
    render.main()


if __name__ == "__main__":
    main(sys.argv[1:])
