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

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mnist_ray import data
from mnist_ray.files import folders, publishing
from mnist_ray.files.folders import ReportFolder
from mnist_ray.reports import metrics, plots

if TYPE_CHECKING:  # the evaluation job puts the models' evaluations side by side with this module
    from mnist_ray.inference.evaluation import Evaluation

GALLERY = 16
"""Images per model in disagreements.png."""
Result = tuple["Evaluation", dict[str, Any]]
"""One model's predictions and the metrics its own report holds."""


def run_ids(sources: Sequence[str], base: str) -> list[str]:
    """Each model's own report id, ``<base>-<label>``; labels that collide are numbered in order."""
    names = [folders.checkpoint_label(s) for s in sources]
    names = [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    return [f"{base}-{n}" for n in names]


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
    for i, (_, scores) in enumerate(results):
        others = np.delete(correct, i, axis=0)
        mine = correct[i]
        counts = {"errors": (~mine).sum(), "wrong_only_here": (~mine & others.all(0)).sum()}
        counts["right_only_here"] = (mine & ~others.any(0)).sum()
        rows.append({**scores, **{k: int(v) for k, v in counts.items()}})
    return pd.DataFrame(rows)


def disagreements(results: Sequence[Result], info: data.DatasetInfo) -> pd.DataFrame:
    """Every image some models get right and others wrong: one row per (image, model), by image then model."""
    correct = _correct(results)
    mixed = correct.any(0) & ~correct.all(0)
    names = np.asarray(info.classes)
    frames = []
    for order, (ev, scores) in enumerate(results):
        rows = ev.predictions.loc[mixed, ["index", "label", "predicted", "confidence", "correct"]]
        rows = rows.assign(run_id=scores["run_id"], model=scores["model"], order=order)
        frames.append(rows.assign(label_name=names[rows["label"]], predicted_name=names[rows["predicted"]]))
    table = pd.concat(frames).sort_values(["index", "order"], ignore_index=True)
    columns = ["index", "label", "label_name", "run_id", "model", "predicted", "predicted_name", "confidence"]
    return table[[*columns, "correct"]]


def _gallery_rows(results: Sequence[Result]) -> list[tuple]:
    """Per model: a heading and the images it alone gets wrong, its most confident mistakes first."""
    correct = _correct(results)
    rows = []
    for i, (ev, scores) in enumerate(results):
        alone = ~correct[i] & np.delete(correct, i, axis=0).all(0)
        wrong = ev.predictions[alone].nlargest(GALLERY, "confidence")
        others = ", ".join(m["run_id"] for j, (_, m) in enumerate(results) if j != i)
        heading = f"{scores['run_id']}\n({scores['model']}) wrong,\n{others} right:\n{int(alone.sum())} images"
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
        errors = metrics.named(metrics.digit_errors(ev.predictions), info)
        panels.append((f"{m['run_id']} ({m['model']}): {m['accuracy']:.2%}", metrics.confusion(ev.predictions), errors))
    with tempfile.TemporaryDirectory(prefix="mnist-ray-compare") as folder:
        local = ReportFolder(folder)
        table.to_parquet(local.comparison, index=False)
        disagree.to_parquet(local.disagreements, index=False)
        plots.plot_comparison(panels, local.comparison_png, class_names=info.classes, noun=info.noun)
        plots.plot_disagreements(_gallery_rows(results), local.disagreements_png, class_names=info.classes)
        Path(local.summary).write_text(_summary(target, table, panels, info, len(disagree["index"].unique())))
        publishing.publish_dir(Path(folder), target, overwrite=overwrite)
    return table


def _summary(target: str, table: pd.DataFrame, panels: list, info: data.DatasetInfo, mixed: int) -> str:
    """The comparison's summary.md: metrics side by side, errors per class side by side, the figures."""
    ids = table["run_id"].tolist()
    per_class = {i: p[2].set_index(info.noun)["errors"] for i, p in zip(ids, panels, strict=True)}
    lines = [
        f"# Comparison {ReportFolder(target).id}",
        "",
        f"{len(ids)} models on the same {table['n'].iloc[0]} {table['dataset'].iloc[0]} test images.",
        "Each one's own report: " + ", ".join(f"[{i}](../{i}/{ReportFolder.summary})" for i in ids),
        "",
        "| report | model | accuracy | loss | macro F1 | errors | wrong only here | right only here |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.run_id} | {r.model} | {r.accuracy:.2%} | {r.loss:.4f} | {r.macro_f1:.4f} | {r.errors} "
            f"| {r.wrong_only_here} | {r.right_only_here} |"
            for r in table.itertuples()
        ),
        "",
        f"{mixed} images are right for some models and wrong for others ({ReportFolder.disagreements}).",
        "",
        f"## Errors per {info.noun}",
        "",
        f"| {info.noun} | " + " | ".join(ids) + " |",
        "|---|" + "---:|" * len(ids),
        *(f"| {name} | " + " | ".join(str(per_class[i][c]) for i in ids) + " |" for c, name in enumerate(info.classes)),
        "",
        "## Figures",
        "",
        f"![confusion matrices and error rankings]({ReportFolder.comparison_png})",
        f"![images one model alone gets wrong]({ReportFolder.disagreements_png})",
        "",
    ]
    return "\n".join(lines)
