"""Ensembles from a sweep of seeds: `jobs/tune.py --seeds K` trains one recipe K times, each trial to the end, and
`jobs/evaluate.py --ensemble-top k` scores the k best trials by validation accuracy as one model.

Members are chosen on validation accuracy only. Every ensemble scored on the test set is recorded (k = 2..K), with
each member's own test accuracy, so no choice made on the test set hides.

    python -m bench.ensemble [K] [recipe flags...]      # default: 5 seeds of the default recipe
"""

from __future__ import annotations

import shutil
import statistics
import sys

import pandas as pd

from bench import common


def measure(seeds: int, flags: list[str]) -> dict:
    """Sweep the seeds, then score every top-k ensemble; the members' and the ensembles' test figures."""
    out, name = common.WORK / "runs", "ensemble-seeds"
    shutil.rmtree(out / name, ignore_errors=True)
    sweep = ["jobs/tune.py", "--seeds", str(seeds), *flags, "--output", str(out), "--name", name]
    sweep_wall, _ = common.run(sweep)
    trials = pd.read_parquet(out / name / "trials.parquet")
    reports = common.WORK / "reports"
    ensembles, members = [], {}
    for k in range(2, seeds + 1):
        run_id = f"ensemble-top{k}"
        command = ["jobs/evaluate.py", "--run", str(out / name), "--ensemble-top", str(k)]
        wall, _ = common.run([*command, "--reports", str(reports), "--run-id", run_id, "--overwrite"])
        table = pd.read_parquet(reports / f"compare-{run_id}" / "comparison.parquet")
        for row in table.iloc[:-1].itertuples():  # the members' own reports
            members[row.checkpoint] = {"checkpoint": row.checkpoint, "test_accuracy": float(row.accuracy)}
        ensemble = table.iloc[-1]
        ensembles.append(
            {
                "kind": "ensemble",
                "k": k,
                "command": " ".join(["python", *command]),
                "test_accuracy": float(ensemble["accuracy"]),
                "test_loss": float(ensemble["loss"]),
                "right_only_here": int(ensemble["right_only_here"]),
                "wrong_only_here": int(ensemble["wrong_only_here"]),
                "evaluate_wall_s": round(wall, 1),
            }
        )
    singles = [m["test_accuracy"] for m in members.values()]
    return {
        "command": " ".join(["python", *sweep]),
        "sweep_wall_s": round(sweep_wall, 1),
        "trials": trials[["trial_id", "seed", "best_val_acc", "epochs_completed"]].to_dict("records"),
        "members": list(members.values()),
        "single_mean": statistics.mean(singles),
        "single_std": statistics.stdev(singles) if len(singles) > 1 else 0.0,
        "ensembles": ensembles,
    }


def main(argv: list[str]) -> None:
    seeds = int(argv[0]) if argv else 5
    common.save("ensemble_default", measure(seeds, argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
