"""What a finished sweep leaves behind: trials.parquet, tune.png, best.json and the best checkpoint."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from ray.train import Checkpoint

from mnist_ray.errors import MnistRayError
from mnist_ray.files import storage
from mnist_ray.files.folders import RunFolder
from mnist_ray.reports import plots
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints

TOP_CURVES = 3


def trial_rows(grid, params: list[str], epochs: int, storage_root: str) -> tuple[pd.DataFrame, dict, dict]:
    """One row per trial (sampled parameters, best/last metrics, early stop, checkpoint), its curve and config."""
    rows, curves, configs = [], {}, {}
    for result in grid:
        history = result.metrics_dataframe
        if history is None or history.empty or "val_acc" not in history:
            history = pd.DataFrame(columns=["epoch", "val_acc", "val_loss", "checkpoint_path"])
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        # The last of equally good epochs: with one checkpoint kept per trial, Ray keeps the later one.
        best = history.loc[history["val_acc"][::-1].idxmax()] if len(history) else {}
        done = int(history["epoch"].max()) if len(history) else 0
        rows.append(
            {
                "trial_id": trial_id,
                **{p: result.config.get(p) for p in params},
                "best_val_acc": float(best.get("val_acc", float("nan"))) if len(history) else float("nan"),
                "best_val_loss": float(history["val_loss"].min()) if len(history) else float("nan"),
                "last_val_acc": float(history["val_acc"].iloc[-1]) if len(history) else float("nan"),
                "last_val_loss": float(history["val_loss"].iloc[-1]) if len(history) else float("nan"),
                "epochs_completed": done,
                "stopped_early": result.error is None and done < epochs,
                "error": None if result.error is None else str(result.error).splitlines()[0][:300],
                "wall_s": float((result.metrics or {}).get("time_total_s", float("nan"))),
                "checkpoint_path": _with_scheme(best.get("checkpoint_path"), storage_root) if len(history) else None,
            }
        )
        curves[trial_id] = history[["epoch", "val_acc"]].astype(float)
        configs[trial_id] = dict(result.config)
    return pd.DataFrame(rows).sort_values("best_val_acc", ascending=False, ignore_index=True), curves, configs


def _with_scheme(path: str | None, storage_root: str) -> str | None:
    """Tune reports checkpoint paths without the URI scheme (``bucket/key``); put back ``s3://`` etc."""
    if path and "://" in storage_root and "://" not in path:
        return f"{storage_root.split('://', 1)[0]}://{path}"
    return path


SWEEP_ONLY = ("epochs", "train_limit", "num_workers", "cpus_per_worker", "use_gpu", "gpus_per_worker", "ddp_backend")
"""Settings that shape a sweep (short trials, a subset, the per-trial layout), not the best recipe."""


def write(grid, out: RunFolder, params: list[str], cfg: TrainConfig, wall_s: float, emit=print) -> dict[str, Any]:
    """Write the sweep's reports into its folder ``out``; return their locations and headline figures.

    best.json is the best trial's own resolved config without the sweep-only settings, so
    ``train.py --config best.json`` trains the full recipe with the train job's epochs, data and layout.
    """
    trials, curves, configs = trial_rows(grid, params, cfg.epochs, out.storage_root)
    finished = trials.dropna(subset=["best_val_acc"])
    if finished.empty:
        raise MnistRayError(f"no trial of sweep {out.path} reported a result; see the trial errors in {out.path}")
    best = finished.iloc[0]
    best_cfg = TrainConfig.from_dict({k: v for k, v in configs[best["trial_id"]].items() if k in cfg.to_dict()})
    recipe = {k: v for k, v in best_cfg.to_dict().items() if k not in SWEEP_ONLY}
    dropped = ", ".join(
        f"{k}={getattr(best_cfg, k)}" for k in SWEEP_ONLY if getattr(best_cfg, k) != getattr(TrainConfig(), k)
    )
    if dropped:
        left = f"{RunFolder.best_config} leaves out the sweep-only settings {dropped}"
        emit(f"{left}: train.py uses its own (or pass them)")
    with tempfile.TemporaryDirectory(prefix="mnist-ray-sweep") as folder:
        local = RunFolder(folder, folder)
        trials.to_parquet(local.trials, index=False)
        plots.plot_tune(trials, {t: curves[t] for t in finished["trial_id"][:TOP_CURVES]}, Path(local.tune_plot))
        Path(local.best_config).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
        for name in ("trials", "tune_plot", "best_config"):
            storage.upload_file(Path(getattr(local, name)), getattr(out, name))
    return {
        "trials": out.trials,
        "plot": out.tune_plot,
        "best_config": out.best_config,
        "best_checkpoint": checkpoints.publish_best(Checkpoint(best["checkpoint_path"]), out),
        "best_trial": best["trial_id"],
        "best_val_acc": float(best["best_val_acc"]),
        "wall_s": wall_s,
        "trials_run": len(trials),
        "stopped_early": int(trials["stopped_early"].sum()),
    }
