"""Evaluation: a checkpoint scored on its dataset's test set, and the report written from the predictions.

Everything that can fail without Ray (the checkpoint, its weights, the test files) is checked by :func:`prepare`
before Ray starts; :func:`score_test_set` then scores on Ray Data (:mod:`mnist_ray.inference.scoring`), and
:mod:`mnist_ray.reports.report` writes the report.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from mnist_ray import data
from mnist_ray.errors import ConfigError
from mnist_ray.inference import pipeline, scoring, sources
from mnist_ray.ray_workarounds import output
from mnist_ray.reports import report


@dataclass(frozen=True)
class Prepared:
    """A model's checkpoints loaded and checked (one, or an ensemble's members), and the test files it is scored on:
    everything before Ray."""

    members: tuple[str, ...]
    states: tuple[dict[str, Any], ...]
    test: data.TestFiles

    @property
    def checkpoint(self) -> str:
        """The checkpoint, or an ensemble's members joined by `` + ``."""
        return " + ".join(self.members)

    @property
    def model(self) -> str:
        """The architecture, or ``ensemble of cnn+cnn+ann``."""
        names = [s["model"] for s in self.states]
        return names[0] if len(names) == 1 else "ensemble of " + "+".join(names)

    @property
    def dataset(self) -> str:
        return self.states[0]["dataset"]


def prepare(
    checkpoint: str, dataset: str | None = None, data_dir: str | None = None, test: data.TestFiles | None = None
) -> Prepared:
    """Load the checkpoint and verify the test files, failing here (not in a Ray task) on any problem with either."""
    state = sources.load([checkpoint], dataset)[0]  # missing, unsafe, not fitting its architecture: fail now
    return Prepared((checkpoint,), (state,), test if test is not None else data.test_files(state["dataset"], data_dir))


def prepare_all(sources: Sequence[str], dataset: str | None = None, data_dir: str | None = None) -> list[Prepared]:
    """Load every checkpoint and the test set once (before Ray); refuse models trained on different datasets."""
    first = prepare(sources[0], dataset, data_dir)
    prepared = [first] + [prepare(s, dataset, test=first.test) for s in sources[1:]]
    odd = [p for p in prepared if p.dataset != first.dataset]
    if odd:
        raise ConfigError(
            f"cannot compare {first.checkpoint} ({first.dataset}) with {odd[0].checkpoint} "
            f"({odd[0].dataset}): the models of one comparison must be trained on the same dataset"
        )
    return prepared


def ensemble(members: Sequence[Prepared]) -> Prepared:
    """One model of the prepared ``members`` (from :func:`prepare_all`): the mean of their probabilities."""
    return Prepared(
        tuple(m for p in members for m in p.members), tuple(s for p in members for s in p.states), members[0].test
    )


@dataclass(frozen=True)
class Evaluation:
    """Per-image predictions of one checkpoint on a test set, with where they came from."""

    predictions: pd.DataFrame
    checkpoint: str
    model: str
    dataset: str
    test: data.TestFiles

    def images_at(self, index: np.ndarray) -> np.ndarray:
        """The test images at ``index`` (the few a gallery shows), read from the test files."""
        return data.read_test(self.test, np.asarray(index, dtype=np.int64))[0]


def score_test_set(
    prep: Prepared,
    use_gpu: bool = False,
    actors: int = 2,
    batch_size: int = 1000,
    progress: bool = False,
    pool: str | None = None,
) -> Evaluation:
    """Score every test image with Ray Data, ``actors`` model replicas at once; Ray must be initialised.

    Ray Data tasks read the test files in ``actors`` slices (:mod:`mnist_ray.inference.pipeline`); only the
    predictions come back. ``progress`` turns on Ray Data's per-operator progress output; ``pool`` is
    :func:`mnist_ray.inference.scoring.score`'s.
    """
    units = pipeline.idx_units(prep.test.images, prep.test.labels, prep.test.n, max(1, actors))
    scored = scoring.score(
        units, True, prep.members, prep.states, scoring.Predictor, use_gpu, actors, batch_size, progress, pool
    )
    with output.dropping_native_lines():  # Ray Data's actor-argument line (see mnist_ray.ray_workarounds.output)
        predictions = scored.to_pandas().sort_values("index", ignore_index=True)
    predictions["correct"] = predictions["label"] == predictions["predicted"]
    return Evaluation(predictions, prep.checkpoint, prep.model, prep.dataset, prep.test)


def evaluate_to_report(
    checkpoint: str, reports: str, run_id: str, overwrite: bool = False, data_dir: str | None = None, **kwargs: Any
) -> tuple[str, dict[str, Any]]:
    """Check the report folder, load the checkpoint, score it and write its report; Ray must be initialised.

    For callers that have done neither check before Ray (train --evaluate, tests); the evaluation job does them
    before Ray starts and calls :func:`score_and_report`. ``kwargs`` go to :func:`score_test_set`.
    """
    target = report.check_new(reports, run_id, overwrite)
    prep = prepare(checkpoint, data_dir=data_dir)
    return target, score_and_report(prep, target, overwrite, **kwargs)[1]


def score_and_report(
    prep: Prepared,
    target: str,
    overwrite: bool = False,
    min_accuracy: float | None = None,
    **predict_kwargs: Any,
) -> tuple[Evaluation, dict[str, Any]]:
    """Score a prepared checkpoint with Ray Data and write its report to ``target``; returns the predictions (a
    comparison of models reuses them) and the report's metrics."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    ev = score_test_set(prep, **predict_kwargs)
    return ev, report.write_report(ev, target, started_at, time.perf_counter() - start, overwrite, min_accuracy)
