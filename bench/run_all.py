"""`make bench`: run every benchmark (or those named: accuracy, accuracy:NAME,..., throughput, evaluation,
sweep, denormals, overhead, cpu_profile, levers, sweep_levers, layout_levers, fit_timeline, throughput_levers,
suite_idle, suite_idle_n2, eval_input, eval_pool, start_levers, ops_faults, asha_sweeps,
predict_scale, ensemble, ensemble_best), then render docs/benchmarks.md.

About 75 minutes on 2 cores; run nothing else meanwhile."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import (  # noqa: E402
    accuracy,
    asha_sweeps,
    cpu_profile,
    denormals,
    ensemble,
    eval_input,
    eval_pool,
    evaluation,
    fit_timeline,
    levers,
    ops_faults,
    overhead,
    predict_scale,
    render,
    start_levers,
    suite_idle,
    sweep,
    throughput,
)

BENCHES = {
    "accuracy": accuracy.main,
    "throughput": throughput.main,
    "throughput_levers": throughput.levers,
    "evaluation": evaluation.main,
    "sweep": sweep.main,
    "denormals": denormals.main,  # reads the sweep's retrain checkpoint
    "overhead": overhead.main,
    "cpu_profile": cpu_profile.main,
    "levers": levers.main,
    "sweep_levers": levers.sweeps,
    "layout_levers": levers.layout,
    "fit_timeline": fit_timeline.main,
    "suite_idle": lambda: suite_idle.main([]),  # the whole test suite under a /proc sampler, about 13 minutes
    "eval_input": eval_input.main,  # the evaluation's input as pandas or Arrow, 3 fresh-process pairs
    "eval_pool": eval_pool.main,  # the evaluation's scoring in an actor pool or in tasks, 3 fresh-process pairs
    "start_levers": lambda: start_levers.main([]),  # three start-up levers of a fresh local Ray, none kept
    "suite_idle_n2": lambda: suite_idle.main(["--processes", "2"]),  # the same in 2 pytest processes (xdist)
    "ops_faults": ops_faults.main,  # stop signals, one run name twice, full disks, wrong addresses: N of N clean
    "asha_sweeps": asha_sweeps.main,  # 30 ASHA sweeps on one shared Ray: hangs counted
    "predict_scale": lambda: predict_scale.main([]),  # predict.py: 10k, 100k PNGs, 1M Parquet rows on S3; plain loop
    "ensemble": lambda: ensemble.main([]),  # 5 seeds of the default recipe, then every top-k ensemble of them
    "ensemble_best": lambda: ensemble.main(["best"]),  # accuracy's seeds of best and of cnn_wide as ensembles
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
