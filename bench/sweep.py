"""An 8-trial Ray Tune sweep on full MNIST (2 epochs per trial, ASHA), then jobs/train.py --config best.json
trained and evaluated on the test set."""

from __future__ import annotations

import json
import re
import shutil

from bench import common


def main() -> None:
    out = common.WORK / "runs"
    shutil.rmtree(out / "sweep8", ignore_errors=True)
    flags = ["--num-samples", "8", "--epochs", "2", "--output", str(out), "--name", "sweep8"]
    wall, stdout = common.run(["jobs/tune.py", *flags])
    best = json.loads((out / "sweep8" / "best.json").read_text())
    stopped = re.search(r"(\d+) stopped early", stdout)
    freed = sum(int(n) for n in re.findall(r"freed (\d+) placement group", stdout))  # the mid-sweep reaper's lines
    train_wall, run_dir, _ = common.train("from_sweep", "--config", str(out / "sweep8" / "best.json"), "--epochs", "12")
    _, metrics = common.evaluate(run_dir, "bench-from-sweep")
    common.save(
        "sweep",
        {
            "command": "python jobs/tune.py " + " ".join(flags[:4]),
            "wall_s": round(wall, 1),
            "stopped_early": int(stopped.group(1)) if stopped else None,
            "placement_groups_freed": freed,
            "best_config": {k: best[k] for k in ("model", "optimizer", "lr", "batch_size", "weight_decay")},
            "retrain_command": "python jobs/train.py --config best.json --epochs 12",
            "retrain_wall_s": round(train_wall, 1),
            "test_accuracy": float(metrics["accuracy"]),
            "test_loss": float(metrics["loss"]),
        },
    )


if __name__ == "__main__":
    main()
