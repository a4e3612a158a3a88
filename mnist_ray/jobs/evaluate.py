"""Evaluate a trained checkpoint on the 10k test set with Ray Data batch inference.

Writes <reports>/<run-id>/ (metrics, predictions, confusion matrix, digit error ranking, figures,
summary.md), complete or absent, to a folder or an s3:// URI; rebuilds <reports>/history.parquet;
exits 3 when --min-accuracy is not met (2 for bad input), so a scheduler can alert on each.
Several --run (or --checkpoint) flags compare models: each gets its own report <run-id>-<run name>,
and <reports>/compare-<run-id>/ puts them side by side (metrics, confusion matrices, disagreements).
With --ensemble they are also one model, the mean of their probabilities, reported as <run-id>-ensemble and
compared with its members; --ensemble-top N with one sweep's --run takes its N best trials by validation accuracy.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, replace
from typing import ClassVar

from mnist_ray.cluster import connection, layout, stop
from mnist_ray.errors import EXIT_BELOW_THRESHOLD
from mnist_ray.files import capacity, folders, lease
from mnist_ray.files.folders import ReportFolder
from mnist_ray.inference import evaluation
from mnist_ray.inference.scoring import ScoringOptions
from mnist_ray.inference.sources import CheckpointSource
from mnist_ray.reports import comparison, mlflow_store, report, tracking
from mnist_ray.settings import cli
from mnist_ray.settings.config import RayOptions, Tracking
from mnist_ray.settings.rules import Interval, validate_fields

emit = functools.partial(print, flush=True)
ENSEMBLE = "ensemble"
"""The ensemble's own report is ``<run-id>-ensemble``, beside its members' ``<run-id>-<run name>``."""


@dataclass(frozen=True)
class EvalOptions(CheckpointSource, ScoringOptions):
    """Which checkpoints to score (several: a comparison), how, and where their reports go."""

    MANY: ClassVar[bool] = True
    RANGES: ClassVar[dict[str, Interval]] = {
        **CheckpointSource.RANGES,
        **ScoringOptions.RANGES,
        "min_accuracy": (0, 1, "[]"),
    }

    reports: str = folders.DEFAULT_REPORTS
    """Reports folder or URI: <reports>/<run-id>/."""
    run_id: str | None = None
    """Report name (default: the UTC time, e.g. 20261126T030000Z)."""
    overwrite: bool = False
    """Replace an existing report with the same run id."""
    min_accuracy: float | None = None
    """Exit 3 when test accuracy is below this fraction, e.g. 0.99 (the report is written first)."""
    dataset: str | None = None
    """Refuse a checkpoint trained on another dataset."""
    data_dir: str | None = None
    """Folder with the four IDX files (default: the dataset's own place)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_fields(self)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, pick and load the checkpoint(s), connect to Ray, evaluate, write the report(s)."""
    p = cli.parser(__doc__)
    cli.add_fields(p.add_argument_group("evaluation"), EvalOptions, EvalOptions())
    cli.add_fields(p.add_argument_group("ray"), RayOptions, RayOptions())
    cli.add_fields(p.add_argument_group("tracking"), Tracking, Tracking())
    args = p.parse_args(argv)
    opts, ray_opts = cli.build(EvalOptions, args), cli.build(RayOptions, args)
    connection.check_address()  # a dead RAY_ADDRESS or stale address file: stop before writing anything
    mlflow_uri = mlflow_store.check(cli.build(Tracking, args).mlflow_uri)  # MLflow installed, store usable
    base = opts.run_id or folders.new_id()
    sources = opts.resolve()
    run_ids = comparison.run_ids(sources, base) if len(sources) > 1 else [base]
    if opts.is_ensemble:  # the ensemble is one more model, beside its members
        run_ids.append(f"{base}-{ENSEMBLE}")
    targets = [report.check_new(opts.reports, run_id, opts.overwrite) for run_id in run_ids]
    joint = report.check_new(opts.reports, folders.COMPARISON_PREFIX + base, opts.overwrite) if run_ids[1:] else None
    outputs = [*targets, *([joint] if joint else [])]
    prepared = evaluation.prepare_all(sources, opts.dataset, opts.data_dir)  # missing, unsafe, wrong: stop here
    if opts.is_ensemble:
        prepared.append(evaluation.ensemble(prepared))
    capacity.check_writable(opts.reports, "--reports")  # the first write, after every check that needs no Ray
    published: list[str] = []
    with (
        lease.holding(outputs, [f"report {f}" for f in outputs]),
        stop.next_step(lambda: _stop_note(published, outputs)),
    ):
        connection.connect(ray_opts.num_cpus, verbose=ray_opts.verbose, dashboard=ray_opts.dashboard)
        use_gpu, actors, chosen = layout.inference(opts.use_gpu, opts.actors)
        if chosen:
            emit(chosen)
        opts = replace(opts, use_gpu=use_gpu, actors=actors)
        results = []
        for prep, target in zip(prepared, targets, strict=True):
            results.append(_evaluate(prep, target, opts, ray_opts))
            published.append(target)
        for prep, (_, m), target in zip(prepared, results, targets, strict=True):  # into each run's MLflow run
            if len(prep.members) == 1:  # an ensemble belongs to no one run
                tracking.log_evaluation(mlflow_uri, target, m)
        if joint:
            _compare(results, joint, opts.overwrite)
            published.append(joint)
    below = [m for _, m in results if m["passed"] is False]
    if below:
        named = [f"{m['accuracy']:.4f}" + (f" ({m['run_id']})" if joint else "") for m in below]
        print(f"error: accuracy {', '.join(named)} is below --min-accuracy {opts.min_accuracy}", file=sys.stderr)
        return EXIT_BELOW_THRESHOLD
    return 0


def _stop_note(published: list[str], folders: list[str]) -> str:
    """Which reports a stopped evaluation published (complete) and which it did not (absent, never partial)."""
    done = f"published {', '.join(published)}" if published else "no report was published"
    rest = [f for f in folders if f not in published]
    again = "rerun with --overwrite to write them all" if published else "the same command writes them"
    return done + (f"; not published: {', '.join(rest)} ({again})" if rest else "")


def _compare(results: list[comparison.Result], target: str, overwrite: bool) -> None:
    """Write the comparison of the models' results; print one line per model and where the comparison is."""
    table = comparison.write_comparison(results, target, overwrite)
    for r in table.itertuples():
        alone = f"{r.wrong_only_here} that only it gets wrong, {r.right_only_here} that only it gets right"
        emit(f"{r.run_id} ({r.model}): accuracy {r.accuracy:.2%}, {r.errors} errors ({alone})")
    emit(f"comparison: {target}\nsummary: {ReportFolder(target).summary}")


def _evaluate(prep: evaluation.Prepared, target: str, opts: EvalOptions, ray_opts: RayOptions) -> comparison.Result:
    """Score one prepared checkpoint and write its own report; print its figures and where the report is."""
    emit(f"evaluating {prep.checkpoint}")
    ev, m = evaluation.score_and_report(
        prep,
        target,
        opts.overwrite,
        min_accuracy=opts.min_accuracy,
        use_gpu=opts.use_gpu,
        actors=opts.actors,
        batch_size=opts.batch_size,
        progress=ray_opts.verbose,
    )
    emit(
        f"test accuracy {m['accuracy']:.2%}, loss {m['loss']:.4f}, macro F1 {m['macro_f1']:.4f} "
        f"on {m['n']} images in {m['seconds']:.1f}s"
    )
    emit(f"report: {target}\nsummary: {ReportFolder(target).summary}")
    return ev, m
