"""What a finished sweep leaves behind: trials.parquet, tune.png, best.json and the best checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
from ray.train import Checkpoint

from mnist_ray import atomic, checkpoints, plots
from mnist_ray.config import TrainConfig
from mnist_ray.errors import MnistRayError

TOP_CURVES = 3


def trial_rows(grid, params: list[str], epochs: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per trial (sampled parameters, best/last metrics, early stop, checkpoint) and its curve."""
    rows, curves = [], {}
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
                "checkpoint_path": best.get("checkpoint_path") if len(history) else None,
            }
        )
        curves[trial_id] = history[["epoch", "val_acc"]].astype(float)
    return pd.DataFrame(rows).sort_values("best_val_acc", ascending=False, ignore_index=True), curves


def write(grid, out: Path, params: list[str], base: TrainConfig, wall_s: float, storage: str) -> dict[str, Any]:
    """Write the sweep's reports into ``out`` and return their paths plus headline figures."""
    trials, curves = trial_rows(grid, params, base.epochs)
    finished = trials.dropna(subset=["best_val_acc"])
    if finished.empty:
        raise MnistRayError(f"no trial of sweep {out.name} reported a result; see the trial errors in {out}")
    best = finished.iloc[0]
    best_cfg = base.with_updates(**{p: _plain(best[p]) for p in params})
    paths = {
        "trials": atomic.write_parquet(out / "trials.parquet", trials),
        "plot": plots.plot_tune(trials, {t: curves[t] for t in finished["trial_id"][:TOP_CURVES]}, out / "tune.png"),
        "best_config": atomic.write_json(out / "best.json", best_cfg.to_dict()),
        "best_checkpoint": _copy_checkpoint(
            _with_scheme(best["checkpoint_path"], storage), out / "best_checkpoint" / checkpoints.FILENAME
        ),
    }
    return {
        **paths,
        "best_trial": best["trial_id"],
        "best_val_acc": float(best["best_val_acc"]),
        "wall_s": wall_s,
        "trials_run": len(trials),
        "stopped_early": int(trials["stopped_early"].sum()),
    }


def _copy_checkpoint(source: str, target: Path) -> Path:
    """Copy a trial's checkpoint (local path or URI) to ``target`` atomically."""
    with Checkpoint(source).as_directory() as folder, atomic.atomic_path(target) as tmp:
        shutil.copyfile(Path(folder) / checkpoints.FILENAME, tmp)
    return target


def _with_scheme(path: str, storage: str) -> str:
    """Tune reports checkpoint paths without the URI scheme (``bucket/key``); put back ``s3://`` etc."""
    if "://" in storage and "://" not in path:
        return f"{storage.split('://', 1)[0]}://{path}"
    return path


def _plain(value: Any) -> Any:
    """numpy scalars from pandas back to Python values, so the config stays JSON-friendly."""
    return value.item() if hasattr(value, "item") else value
