"""The folders jobs write, and the name of every file in them: the one place these names are spelled.

A training run or sweep lives in ``<output>/<name>/`` (:class:`RunFolder`), with Ray Train's checkpoints in
``<storage>/<name>/`` (the same folder unless ``--storage-path`` puts them elsewhere). An evaluation report lives in
``<reports>/<report id>/`` (:class:`ReportFolder`), and ``<reports>/`` holds the history of every report. Prediction
and export outputs are one folder each. Every path is a local path or a URI (:mod:`mnist_ray.files.storage`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mnist_ray.files import storage

HOME = Path.home() / "mnist_ray"
DEFAULT_RUNS = str(HOME / "runs")
"""Where training runs and sweeps go unless --output says otherwise."""
DEFAULT_REPORTS = str(HOME / "reports")
"""Where evaluation reports go unless --reports says otherwise."""
DEFAULT_PREDICTIONS = str(HOME / "predictions")
"""Where predictions go unless --output says otherwise: one folder per run, named by its UTC time."""
DEFAULT_EXPORTS = str(HOME / "exports")
"""Where exports go unless --output says otherwise: one folder per export, named by its UTC time."""

BEST_CHECKPOINT = "best_checkpoint"
"""The folder in a finished run or sweep that holds a copy of its best checkpoint."""
CHECKPOINT_FILE = "model.pt"
"""The file inside every checkpoint folder."""
RAY_CHECKPOINT_PREFIX = "checkpoint_epoch_"
"""Ray Train's checkpoint folders of a run, ``checkpoint_epoch_NNN``, named by the training loop's report."""
COMPARISON_PREFIX = "compare-"
"""A comparison of the models evaluated under report id X is ``<reports>/compare-X/``."""


def _under(path: str, *parts: str) -> str:
    return storage.join(path, *parts)


class File:
    """A file of a folder type: on the class, its name relative to the folder (``ReportFolder.summary`` is
    ``summary.md``, for links between files); on an instance, its path (``folder.summary``)."""

    def __init__(self, *name: str, base: str = "path", doc: str = "") -> None:
        self.name, self.base, self.__doc__ = "/".join(name), base, doc

    def __get__(self, folder: object, owner: type) -> str:
        return self.name if folder is None else _under(getattr(folder, self.base), self.name)


@dataclass(frozen=True)
class RunFolder:
    """A training run's or a sweep's folder, ``path`` (reports, config), and ``checkpoints``, where Ray Train keeps
    the run's checkpoints (or a sweep its trials): ``<storage>/<name>``, the same folder by default."""

    path: str
    checkpoints: str

    @classmethod
    def of(cls, output: str, name: str, storage_path: str | None = None) -> RunFolder:
        """Run ``name`` under ``output``, its checkpoints under ``storage_path`` (default: ``output``)."""
        return cls(_under(storage.normalize(output), name), _under(storage.normalize(storage_path or output), name))

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage_root(self) -> str:
        """What Ray Train and Tune take as ``storage_path``: the folder that holds ``checkpoints``."""
        return storage.parent(self.checkpoints)

    config = File("config.json", doc="The TrainConfig a run was started with (JSON); a resume checks against it.")
    history = File("history.parquet", doc="One row of metrics per epoch.")
    curves = File("curves.png", doc="Loss and accuracy curves.")
    tracking = File("tracking.json", doc="The MLflow store, experiment and run that the run logs to.")
    best_checkpoint = File(BEST_CHECKPOINT, CHECKPOINT_FILE, doc="A copy of the best checkpoint by val accuracy.")
    sweep_spec = File("sweep.json", doc="A sweep's definition (base config, space, options); --resume reads it.")
    trials = File("trials.parquet", doc="A sweep's table of trials.")
    tune_plot = File("tune.png", doc="A sweep's figure of its best trials' curves.")
    best_config = File("best.json", doc="A sweep's best recipe, accepted by ``jobs/train.py --config``.")
    trial_runs = File("train", base="checkpoints", doc="A sweep's trials' Ray Train runs, one folder per trial id.")
    checkpoint_snapshot = File(
        "checkpoint_manager_snapshot.json",
        base="checkpoints",
        doc="Ray Train's record of the checkpoints it has persisted completely.",
    )

    def epoch_checkpoint(self, epoch: int) -> str:
        """Ray Train's checkpoint folder of ``epoch``."""
        return _under(self.checkpoints, checkpoint_dir_name(epoch))


def checkpoint_dir_name(epoch: int) -> str:
    """The name of the checkpoint folder the training loop reports for ``epoch`` (1-based)."""
    return f"{RAY_CHECKPOINT_PREFIX}{epoch:03d}"


def checkpoint_epochs(text: str) -> list[int]:
    """The epochs of the checkpoint folders named in ``text`` (Ray Train's snapshot, or a listing)."""
    return [int(n) for n in re.findall(RAY_CHECKPOINT_PREFIX + r"(\d+)", text)]


def run_of(checkpoint: str) -> RunFolder:
    """The run (or sweep) a checkpoint belongs to: ``<run>/<checkpoint folder>/model.pt`` -> ``<run>``."""
    folder = checkpoint.rstrip("/")
    if folder.endswith(".pt"):
        folder = folder.rsplit("/", 1)[0]
    run = folder.rsplit("/", 1)[0]
    return RunFolder(run, run)


def checkpoint_label(checkpoint: str) -> str:
    """A short name for a checkpoint: its run's folder name, with the epoch folder for one epoch's checkpoint."""
    parts = [p for p in checkpoint.rstrip("/").split("/") if p]
    folder = parts[-2] if len(parts) > 1 else "model"
    if len(parts) > 2 and folder == BEST_CHECKPOINT:
        folder = parts[-3]
    elif len(parts) > 2 and folder.startswith(RAY_CHECKPOINT_PREFIX):
        folder = f"{parts[-3]}-{folder}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", folder).lstrip("._-") or "model"


def new_id() -> str:
    """A sortable UTC timestamp such as ``20261125T153012Z``: the default report id and output folder name."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@dataclass(frozen=True)
class ReportFolder:
    """One evaluation report (``<reports>/<id>``), or a comparison of models (``<reports>/compare-<id>``)."""

    path: str

    @property
    def id(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def root(self) -> str:
        """The reports folder that holds this report and the history."""
        return storage.parent(self.path)

    metrics = File("metrics.parquet", doc="The report's one row of metrics (the history is built from these).")
    predictions = File("predictions.parquet", doc="One row per test image.")
    confusion_matrix = File("confusion_matrix.parquet")
    confusion_png = File("confusion_matrix.png")
    digit_errors = File("digit_errors.parquet", doc="Classes ranked by errors.")
    digit_errors_png = File("digit_errors.png")
    per_class = File("per_class.parquet", doc="Precision, recall and F1 per class.")
    misclassified_png = File("misclassified.png", doc="The most confident mistakes.")
    summary = File("summary.md", doc="The report for people, with its figures.")
    comparison = File("comparison.parquet", doc="A comparison's one row per model.")
    comparison_png = File("comparison.png")
    disagreements = File("disagreements.parquet", doc="Images some models get right and others wrong.")
    disagreements_png = File("disagreements.png")


def reports_history(reports: str) -> tuple[str, str]:
    """The history of every report under ``reports``: its table and its figure."""
    return _under(reports, "history.parquet"), _under(reports, "history.png")


def report_folder(reports: str, report_id: str) -> ReportFolder:
    """The report ``report_id`` under the reports folder (path or URI) ``reports``."""
    return ReportFolder(_under(storage.normalize(reports), report_id))


PREDICTIONS = "predictions.parquet"
"""A prediction job's table (a folder of ordered Parquet parts) in its output folder."""


def predictions(output: str) -> str:
    """The predictions table in the prediction job's output folder ``output``."""
    return _under(output, PREDICTIONS)
