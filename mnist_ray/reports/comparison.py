"""Models compared on one test set: the notebook's ANN-vs-CNN comparison as one report.

Each model gets its own evaluation report (:mod:`mnist_ray.reports.report`); the comparison puts them side by
side in ``<reports>/compare-<run-id>/``, published the same way (complete or absent, manifest last):

- ``comparison.parquet``: one row per model: its own report's metrics, its errors, and how many images
  it alone gets wrong (every other model right) or alone gets right;
- ``comparison.png``: the confusion matrices and error rankings, one column per model;
- ``disagreements.parquet``: every test image the models do not all get right or all get wrong, one row
  per model;
- ``disagreements.png``: per model, the images it alone gets wrong, most confident mistake first;
- ``summary.md``: the tables, links to each model's own report, the figures.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mnist_ray import data
from mnist_ray.errors import ConfigError
from mnist_ray.files import publishing
from mnist_ray.inference import scoring
from mnist_ray.reports import plots, report
from mnist_ray.training import checkpoints

PREFIX = "compare-"
"""A comparison of the models evaluated under run id X is ``<reports>/compare-X/``."""
GALLERY = 16
"""Images per model in disagreements.png."""
Result = tuple[scoring.Evaluation, dict[str, Any]]
"""One model's predictions and the metrics its own report holds."""


def resolve(checkpoints_given: Sequence[str], runs: Sequence[str], models_dir: str | None = None) -> list[str]:
    """The checkpoint file of each --checkpoint and --run, in order (or the newest run's), each model once."""
    given = [("--checkpoint", c) for c in checkpoints_given] + [("--run", r) for r in runs]
    if not given:
        return [scoring.resolve_checkpoint(models_dir=models_dir)]
    found = [scoring.resolve_checkpoint(**{flag.lstrip("-"): value}) for flag, value in given]
    for i, path in enumerate(found):
        if path in found[:i]:
            first = found.index(path)
            raise ConfigError(
                f"{' '.join(given[first])} and {' '.join(given[i])} are the same checkpoint {path}: "
                "a comparison needs different models"
            )
    return found


def label(checkpoint: str) -> str:
    """A short name for a checkpoint: its run's folder name (``<run>/best_checkpoint/model.pt`` -> ``<run>``)."""
    parts = [p for p in checkpoint.rstrip("/").split("/") if p]
    folder = parts[-2] if len(parts) > 1 else "model"
    if len(parts) > 2 and folder == "best_checkpoint":
        folder = parts[-3]
    elif len(parts) > 2 and folder.startswith(checkpoints.RAY_DIR_PREFIX):  # one epoch's checkpoint of a run
        folder = f"{parts[-3]}-{folder}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", folder).lstrip("._-") or "model"


def run_ids(sources: Sequence[str], base: str) -> list[str]:
    """Each model's own report id, ``<base>-<label>``; labels that collide are numbered in order."""
    names = [label(s) for s in sources]
    names = [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    return [f"{base}-{n}" for n in names]


def prepare_all(sources: Sequence[str], dataset: str | None = None, data_dir: str | None = None) -> list:
    """Load every checkpoint and the test set once (before Ray); refuse models trained on different datasets."""
    first = scoring.prepare(sources[0], dataset, data_dir)
    prepared = [first] + [scoring.prepare(s, dataset, test=first.test) for s in sources[1:]]
    odd = [p for p in prepared if p.state["dataset"] != first.state["dataset"]]
    if odd:
        raise ConfigError(
            f"cannot compare {first.checkpoint} ({first.state['dataset']}) with {odd[0].checkpoint} "
            f"({odd[0].state['dataset']}): the models of one comparison must be trained on the same dataset"
        )
    return prepared


def _correct(results: Sequence[Result]) -> np.ndarray:
    """(models, images) bool: which model gets which test image right (predictions are in index order)."""
    indices = [ev.predictions["index"].to_numpy() for ev, _ in results]
    if any(not np.array_equal(indices[0], i) for i in indices[1:]):
        raise ValueError("the models were scored on different test images")
    return np.stack([ev.predictions["correct"].to_numpy(dtype=bool) for ev, _ in results])


def comparison_table(results: Sequence[Result]) -> pd.DataFrame:
    """One row per model: its report's metrics, then errors, wrong_only_here and right_only_here.

    ``wrong_only_here``: images this model gets wrong and every other model right;
    ``right_only_here``: images this model gets right and every other model wrong.
    """
    correct = _correct(results)
    rows = []
    for i, (_, metrics) in enumerate(results):
        others = np.delete(correct, i, axis=0)
        mine = correct[i]
        counts = {"errors": (~mine).sum(), "wrong_only_here": (~mine & others.all(0)).sum()}
        counts["right_only_here"] = (mine & ~others.any(0)).sum()
        rows.append({**metrics, **{k: int(v) for k, v in counts.items()}})
    return pd.DataFrame(rows)


def disagreements(results: Sequence[Result], info: data.DatasetInfo) -> pd.DataFrame:
    """Every image some models get right and others wrong: one row per (image, model), by image then model."""
    correct = _correct(results)
    mixed = correct.any(0) & ~correct.all(0)
    names = np.asarray(info.classes)
    frames = []
    for order, (ev, metrics) in enumerate(results):
        rows = ev.predictions.loc[mixed, ["index", "label", "predicted", "confidence", "correct"]]
        rows = rows.assign(run_id=metrics["run_id"], model=metrics["model"], order=order)
        frames.append(rows.assign(label_name=names[rows["label"]], predicted_name=names[rows["predicted"]]))
    table = pd.concat(frames).sort_values(["index", "order"], ignore_index=True)
    columns = ["index", "label", "label_name", "run_id", "model", "predicted", "predicted_name", "confidence"]
    return table[[*columns, "correct"]]


def _gallery_rows(results: Sequence[Result]) -> list[tuple]:
    """Per model: a heading and the images it alone gets wrong, its most confident mistakes first."""
    correct = _correct(results)
    rows = []
    for i, (ev, metrics) in enumerate(results):
        alone = ~correct[i] & np.delete(correct, i, axis=0).all(0)
        wrong = ev.predictions[alone].nlargest(GALLERY, "confidence")
        others = ", ".join(m["run_id"] for j, (_, m) in enumerate(results) if j != i)
        heading = f"{metrics['run_id']}\n({metrics['model']}) wrong,\n{others} right:\n{int(alone.sum())} images"
        heading += ",\nmost confident first" if len(wrong) else ""
        idx = wrong["index"].to_numpy()
        rows.append((heading, ev.images_at(idx), *(wrong[c].to_numpy() for c in ("label", "predicted", "confidence"))))
    return rows


def write_comparison(results: Sequence[Result], target: str, overwrite: bool = False) -> pd.DataFrame:
    """Write the comparison of ``results`` (each model's predictions and metrics) to ``target``, complete or absent."""
    info = data.DATASET_INFO[results[0][0].dataset]
    table, disagree = comparison_table(results), disagreements(results, info)
    panels = []
    for ev, m in results:
        errors = report.named(scoring.digit_errors(ev.predictions), info)
        panels.append(
            (f"{m['run_id']} ({m['model']}): {m['accuracy']:.2%}", scoring.confusion(ev.predictions), errors)
        )
    with tempfile.TemporaryDirectory(prefix="mnist-ray-compare") as folder:
        tmp = Path(folder)
        table.to_parquet(tmp / "comparison.parquet", index=False)
        disagree.to_parquet(tmp / "disagreements.parquet", index=False)
        plots.plot_comparison(panels, tmp / "comparison.png", class_names=info.classes, noun=info.noun)
        plots.plot_disagreements(_gallery_rows(results), tmp / "disagreements.png", class_names=info.classes)
        (tmp / "summary.md").write_text(_summary(target, table, panels, info, len(disagree["index"].unique())))
        publishing.publish_dir(tmp, target, overwrite=overwrite)
    return table


def _summary(target: str, table: pd.DataFrame, panels: list, info: data.DatasetInfo, mixed: int) -> str:
    """The comparison's summary.md: metrics side by side, errors per class side by side, the figures."""
    ids = table["run_id"].tolist()
    per_class = {i: p[2].set_index(info.noun)["errors"] for i, p in zip(ids, panels, strict=True)}
    lines = [
        f"# Comparison {target.rstrip('/').rsplit('/', 1)[-1]}",
        "",
        f"{len(ids)} models on the same {table['n'].iloc[0]} {table['dataset'].iloc[0]} test images.",
        "Each one's own report: " + ", ".join(f"[{i}](../{i}/summary.md)" for i in ids),
        "",
        "| report | model | accuracy | loss | macro F1 | errors | wrong only here | right only here |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.run_id} | {r.model} | {r.accuracy:.2%} | {r.loss:.4f} | {r.macro_f1:.4f} | {r.errors} "
            f"| {r.wrong_only_here} | {r.right_only_here} |"
            for r in table.itertuples()
        ),
        "",
        f"{mixed} images are right for some models and wrong for others (disagreements.parquet).",
        "",
        f"## Errors per {info.noun}",
        "",
        f"| {info.noun} | " + " | ".join(ids) + " |",
        "|---|" + "---:|" * len(ids),
        *(f"| {name} | " + " | ".join(str(per_class[i][c]) for i in ids) + " |" for c, name in enumerate(info.classes)),
        "",
        "## Figures",
        "",
        "![confusion matrices and error rankings](comparison.png)",
        "![images one model alone gets wrong](disagreements.png)",
        "",
    ]
    return "\n".join(lines)
