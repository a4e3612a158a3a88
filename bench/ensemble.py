"""Ensembles: several checkpoints of one recipe scored as one model by `jobs/evaluate.py`.

Two ways to get the members, each a bench:

- ``seeds``: `jobs/tune.py --seeds K` trains one recipe K times, each trial to the end, and
  `jobs/evaluate.py --ensemble-top k` scores the k best trials by validation accuracy as one model. Every top-k
  ensemble (k = 2..K) is recorded.
- ``best``: the runs bench/accuracy.py trained: seeds of ``--preset best`` (the deep CNN), of the small CNN that
  was ``best`` before it, of the wide CNN, and of the deep CNN with a moving average (and elastic distortion), those
  that have run. Each recipe's seeds are one ensemble (``--run`` repeated with ``--ensemble``), then the best three
  and the best five of all the runs by validation accuracy. The members are fixed before any test figure is read.

Every ensemble scored on the test set is recorded with each member's own test accuracy, so no choice made on the
test set hides.

    python -m bench.ensemble [K] [recipe flags...]      # default: 5 seeds of the default recipe
    python -m bench.ensemble best                       # after bench.accuracy's cnn_deep*, cnn_small_best*...
"""

from __future__ import annotations

import shutil
import statistics
import sys

import pandas as pd

from bench import accuracy, common


def score(command: list[str], run_id: str) -> tuple[dict, dict[str, dict]]:
    """Evaluate one ensemble; its figures and each member's own test accuracy, by checkpoint."""
    reports = common.WORK / "reports"
    wall, _ = common.run([*command, "--reports", str(reports), "--run-id", run_id, "--overwrite"])
    table = pd.read_parquet(reports / f"compare-{run_id}" / "comparison.parquet")
    members = {
        row.checkpoint: {"checkpoint": row.checkpoint, "test_accuracy": float(row.accuracy)}
        for row in table.iloc[:-1].itertuples()  # the members' own reports
    }
    ensemble = table.iloc[-1]
    figures = {
        "kind": "ensemble",
        "k": len(members),
        "command": " ".join(["python", *command]),
        "test_accuracy": float(ensemble["accuracy"]),
        "test_loss": float(ensemble["loss"]),
        "right_only_here": int(ensemble["right_only_here"]),
        "wrong_only_here": int(ensemble["wrong_only_here"]),
        "evaluate_wall_s": round(wall, 1),
    }
    return figures, members


def _singles(members: dict[str, dict]) -> dict:
    accuracies = [m["test_accuracy"] for m in members.values()]
    return {
        "members": list(members.values()),
        "single_mean": statistics.mean(accuracies),
        "single_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
    }


def seeds(k_max: int, flags: list[str]) -> dict:
    """Sweep the seeds, then score every top-k ensemble; the members' and the ensembles' test figures."""
    out, name = common.WORK / "runs", "ensemble-seeds"
    shutil.rmtree(out / name, ignore_errors=True)
    sweep = ["jobs/tune.py", "--seeds", str(k_max), *flags, "--output", str(out), "--name", name]
    sweep_wall, _ = common.run(sweep)
    trials = pd.read_parquet(out / name / "trials.parquet")
    ensembles, members = [], {}
    for k in range(2, k_max + 1):
        command = ["jobs/evaluate.py", "--run", str(out / name), "--ensemble-top", str(k)]
        figures, scored = score(command, f"ensemble-top{k}")
        ensembles.append(figures)
        members.update(scored)
    return {
        "command": " ".join(["python", *sweep]),
        "sweep_wall_s": round(sweep_wall, 1),
        "trials": trials[["trial_id", "seed", "best_val_acc", "epochs_completed"]].to_dict("records"),
        **_singles(members),
        "ensembles": ensembles,
    }


GROUPS = {
    "small best": "cnn_small_best",
    "wide": "cnn_wide",
    "deep": "cnn_deep",
    "deep, ema, elastic": "cnn_deep_ema_elastic",
    "deep, ema": "cnn_deep_ema",
}
"""Ensembles of bench/accuracy.py's runs: every seed of one recipe (its name, then ``_seed1``, ``_seed2``...)."""
MAX_MEMBERS = 5


def _best_val_acc(run: str) -> float:
    return float(pd.read_parquet(common.WORK / "runs" / run / "history.parquet")["val_acc"].max())


def best() -> dict:
    """Score bench/accuracy.py's seeds of each recipe in :data:`GROUPS` as one ensemble, then the best 3 and the
    best :data:`MAX_MEMBERS` of all of them by validation accuracy (each run's own held-out split)."""
    trained = [name for name in accuracy.RECIPES if (common.WORK / "runs" / name / "history.parquet").is_file()]
    families = {g: [n for n in trained if n == name or n.startswith(f"{name}_seed")] for g, name in GROUPS.items()}
    groups = {g: names for g, names in families.items() if len(names) > 1}
    pooled = [n for names in families.values() for n in names]  # a recipe run once is still a candidate
    ranked = sorted(pooled, key=_best_val_acc, reverse=True)
    for k in (3, MAX_MEMBERS):
        if len(pooled) > k:
            groups[f"top {k} by validation"] = ranked[:k]
    ensembles, members = [], {}
    for group, names in groups.items():
        command = ["jobs/evaluate.py", *(a for n in names for a in ("--run", str(common.WORK / "runs" / n)))]
        figures, scored = score([*command, "--ensemble"], f"ensemble-{group.replace(', ', '-').replace(' ', '-')}")
        ensembles.append({"members_from": group, "runs": names, **figures})
        members.update(scored)
    return {"runs": pooled, **_singles(members), "ensembles": ensembles}


def main(argv: list[str]) -> None:
    if argv[:1] == ["best"]:
        common.save("ensemble_best", best())
    else:
        common.save("ensemble_default", seeds(int(argv[0]) if argv else 5, argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
