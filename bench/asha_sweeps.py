"""ASHA sweeps in a row on one shared Ray, as the test suite and a long-lived cluster run them: does any hang?

Each sweep is the suite's ASHA scenario (a good and a hopeless learning rate, one at a time, 2 epochs of 2,048
images, so ASHA stops the hopeless one after its first epoch). A sweep not done within ``HANG_S`` counts as a
hang and ends the bench (a hung sweep holds the shared Ray). Ray Tune 2.60 could deadlock a trial whose last
report was still in flight when its function returned (tests/test_tuning.py reproduces it); trials now report to
Tune from their own thread. Run: ``python bench/run_all.py asha_sweeps`` (about 15 minutes for 30 sweeps).
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time

from bench import common

SWEEPS = 30
HANG_S = 180.0
TINY = {"epochs": 2, "train_limit": 2048, "val_size": 512, "batch_size": 64, "augment": False}


def one_sweep(folder: str, name: str) -> dict:
    """The suite's ASHA scenario once, in this process's Ray: its wall time and how ASHA ended each trial."""
    from mnist_ray.settings.config import RunOptions, TrainConfig
    from mnist_ray.training import search, sweep

    run = RunOptions(name=name, output=folder)
    space = search.SearchSpace(lr_values=(3e-3, 1e-6), optimizers=("adam",))
    plan = search.preflight(TrainConfig(**TINY), space, search.SweepOptions(num_samples=1, max_concurrent=1), run)
    start = time.perf_counter()
    out = sweep.sweep(plan, run, emit=lambda line: None)
    return {"wall_s": round(time.perf_counter() - start, 1), "trials": out.trials_run, "stopped": out.stopped_early}


def main(sweeps: int = SWEEPS) -> None:
    from mnist_ray.cluster import connection

    connection.connect(num_cpus=2)  # one shared Ray for every sweep, with its dashboard, as the suite's
    results: list[dict] = []
    hangs = 0
    with tempfile.TemporaryDirectory(prefix="asha-sweeps-") as folder:
        for i in range(sweeps):
            box: dict = {}

            def run(i: int = i, box: dict = box) -> None:
                try:
                    box["result"] = one_sweep(folder, f"asha{i:02d}")
                except Exception as exc:  # noqa: BLE001 - a failed sweep is recorded, not a hang
                    box["result"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            thread.join(HANG_S)
            if thread.is_alive():
                hangs += 1
                results.append({"hang": True})
                print(f"sweep {i + 1}: no end after {HANG_S:.0f} s: counted as a hang; stopping", flush=True)
                break
            results.append(box["result"])
            print(f"sweep {i + 1}/{sweeps}: {box['result']}", flush=True)
    walls = [r["wall_s"] for r in results if "wall_s" in r]
    summary = {
        "command": "python bench/run_all.py asha_sweeps",
        "sweeps": len(results),
        "hangs": hangs,
        "failed": sum("error" in r for r in results),
        "asha_stopped_the_hopeless_trial": sum(r.get("stopped") == 1 for r in results),
        "wall_s_median": round(common.median(walls), 1) if walls else None,
        "wall_s_max": max(walls, default=None),
        "runs": results,
    }
    common.save("asha_sweeps", summary)


if __name__ == "__main__":
    sys.path.insert(0, str(common.REPO))
    main(int(sys.argv[1]) if len(sys.argv) > 1 else SWEEPS)
