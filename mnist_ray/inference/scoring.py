"""Batch evaluation of a checkpoint on the 10k test set with Ray Data, and the metrics derived from it.

Inference runs as ``map_batches`` in Ray tasks on CPUs: each worker process loads the model once per evaluation
and scores many batches (a GPU evaluation keeps an actor pool: see :func:`score`). Tasks, not an actor pool,
because Ray reuses its idle worker processes for tasks: a process that imported torch for one evaluation scores
the next one at once, where an actor pool started fresh processes for every evaluation (about 4.5 of each call's
5.5 s on 2 cores; ``python -m bench.eval_pool``, bench/NOTES.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mnist_ray import data
from mnist_ray.cluster import connection
from mnist_ray.errors import CheckpointError, ConfigError, ResourceError
from mnist_ray.files import storage
from mnist_ray.files.folders import DEFAULT_RUNS
from mnist_ray.inference import pipeline
from mnist_ray.ray_workarounds import output
from mnist_ray.training import checkpoints, models


def check_one_source(checkpoint: str | None, run: str | None, models_dir: str | None) -> None:
    """At most one of the three ways to name a checkpoint (none: the newest run under the default folder)."""
    if sum(x is not None for x in (checkpoint, run, models_dir)) > 1:
        raise ConfigError("pass only one of --checkpoint, --run and --models-dir")


def resolve_checkpoint(checkpoint: str | None = None, run: str | None = None, models_dir: str | None = None) -> str:
    """The checkpoint file (path or URI) to evaluate: explicit, a run/sweep's best, or the newest run's best."""
    if checkpoint:
        if storage.is_file(checkpoint):
            return storage.normalize(checkpoint)
        inside = storage.join(checkpoint, checkpoints.FILENAME)
        if storage.is_file(inside):
            return storage.normalize(inside)
        raise CheckpointError(f"checkpoint {checkpoint} does not exist: pass a model.pt or a checkpoint folder")
    if run:
        path = storage.join(storage.normalize(run), checkpoints.BEST)
        if not storage.is_file(path):
            raise CheckpointError(f"{run} has no {checkpoints.BEST}: is it a finished training run or sweep folder?")
        return path
    root = storage.normalize(models_dir or DEFAULT_RUNS)
    found = [storage.join(root, d, checkpoints.BEST) for d in storage.list_dirs(root)]
    dated = [(storage.mtime(p), p) for p in found if storage.is_file(p)]
    if not dated:
        raise CheckpointError(
            f"no finished run (with {checkpoints.BEST}) under {root}: train one, or pass --checkpoint"
        )
    return max(dated)[1]


@dataclass(frozen=True)
class Prepared:
    """A checkpoint loaded and checked, and the test files it is scored on: everything before Ray."""

    checkpoint: str
    state: dict[str, Any]
    test: data.TestFiles


def prepare(
    checkpoint: str, dataset: str | None = None, data_dir: str | None = None, test: data.TestFiles | None = None
) -> Prepared:
    """Load the checkpoint and verify the test files, failing here (not in a Ray task) on any problem with either."""
    state = checkpoints.load(checkpoint, dataset=dataset)
    checkpoints.build_model(state)  # weights that do not fit the architecture fail now, not in a task
    return Prepared(checkpoint, state, test if test is not None else data.test_files(state["dataset"], data_dir))


CPU_CHUNK = 256
"""Images per forward pass on a CPU, whose activations stay in cache: on one core, 10k test images took 2.25 s in
batches of 1,000 (NCHW) and 0.66 s in chunks of 256 (NHWC), medians of 3 (bench/NOTES.md)."""


class Predictor:
    """Holds the model and maps a batch of images to predictions: one per worker process and evaluation.

    Each process reads the checkpoint itself (a path every node reaches: one node, or a URI), so no
    large argument goes through the object store; only a multi-node cluster with a checkpoint on the
    driver's local disk gets the state as an object-store reference instead.
    """

    def __init__(self, source: dict[str, Any], use_gpu: bool = False, threads: int = 1) -> None:
        import ray
        import torch

        models.set_cpu_threads(threads)
        self.torch = torch
        self.device = torch.device("cuda" if use_gpu else "cpu")
        state = checkpoints.load(source["path"]) if "path" in source else ray.get(source["ref"][0])
        # NHWC: oneDNN's and cuDNN's fast layout (with CPU_CHUNK, 3.4x faster scoring on a CPU core here)
        self.model = checkpoints.build_model(state).to(self.device, memory_format=torch.channels_last)
        self.stats = checkpoints.normalization(state)  # the statistics it was trained with
        self.chunk = None if use_gpu else CPU_CHUNK

    def log_probs(self, images: np.ndarray) -> Any:
        """Log-probabilities (N, classes) of uint8 (N, 28, 28) images, a tensor on the model's device.

        On a CPU the batch goes through the model in chunks of :data:`CPU_CHUNK` images; a GPU takes it whole.
        """
        torch = self.torch
        step = self.chunk or len(images)  # normalised a chunk at a time on a CPU: its floats stay in cache
        parts = (data.normalize(images[i : i + step], self.stats).to(self.device) for i in range(0, len(images), step))
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = torch.cat([self.model(part).float() for part in parts])
        return torch.log_softmax(logits, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        log_probs = self.log_probs(batch["image"])
        labels = self.torch.from_numpy(batch["label"]).to(self.device)
        confidence, predicted = log_probs.exp().max(1)
        loss = -log_probs.gather(1, labels[:, None])[:, 0]
        return {
            "index": batch["row"],
            "label": batch["label"],
            "predicted": predicted.cpu().numpy(),
            "confidence": confidence.cpu().numpy(),
            "loss": loss.cpu().numpy(),
        }


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


def predict(
    prep: Prepared,
    use_gpu: bool = False,
    actors: int = 2,
    batch_size: int = 1000,
    progress: bool = False,
    pool: str | None = None,
) -> Evaluation:
    """Score every test image with Ray Data, ``actors`` model replicas at once; Ray must be initialised.

    Ray Data tasks read the test files in ``actors`` slices (:mod:`mnist_ray.inference.pipeline`); only the predictions
    come back. ``progress`` turns on Ray Data's per-operator progress output; ``pool`` is :func:`score`'s.
    """
    units = pipeline.idx_units(prep.test.images, prep.test.labels, prep.test.n, max(1, actors))
    scored = score(units, True, prep.checkpoint, prep.state, Predictor, use_gpu, actors, batch_size, progress, pool)
    with output.dropping_native_lines():  # Ray Data's actor-argument line (see mnist_ray.ray_workarounds.output)
        predictions = scored.to_pandas().sort_values("index", ignore_index=True)
    predictions["correct"] = predictions["label"] == predictions["predicted"]
    return Evaluation(predictions, prep.checkpoint, prep.state["model"], prep.state["dataset"], prep.test)


def score(
    units: list[dict[str, Any]],
    local: bool,
    checkpoint: str,
    state: dict[str, Any],
    fn: type = Predictor,
    use_gpu: bool = False,
    actors: int = 2,
    batch_size: int = 1000,
    progress: bool = False,
    pool: str | None = None,
) -> Any:
    """The images of ``units`` (:func:`mnist_ray.inference.pipeline.dataset`; ``local``: files on the driver's disk)
    mapped through ``fn``, ``actors`` replicas at once.

    ``fn`` is :class:`Predictor` or a subclass (the prediction job's). ``pool`` is ``"tasks"`` on CPUs and
    ``"actors"`` (a pool of ``actors`` replicas) with ``use_gpu``: Ray runs a GPU function's process for one call
    only (``max_calls=1``), so GPU tasks would start a process and initialise CUDA per block, and the GPU path
    keeps the actor pool measured on the H100s (docs/gpu.md). ``bench/eval_pool.py`` compares the two on CPUs.
    Returns the mapped dataset, lazily: consuming it runs the pipeline.
    """
    import uuid

    import ray

    if use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise ResourceError("--use-gpu: this Ray cluster has no GPU; drop --use-gpu")
    ray.data.DataContext.get_current().enable_progress_bars = progress
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.INFO if progress else logging.ERROR)
    local_only = not storage.is_uri(checkpoint) and connection.alive_nodes() > 1
    source = {"ref": [ray.put(state)]} if local_only else {"path": checkpoint}
    pool = pool or ("actors" if use_gpu else "tasks")
    if pool not in ("tasks", "actors"):
        raise ValueError(f"pool must be 'tasks' or 'actors', not {pool!r}")
    ds = pipeline.dataset(units, local, actors if pool == "tasks" else None)  # tasks: reading fused with scoring
    kwargs = {"source": source, "use_gpu": use_gpu}
    if pool == "actors":
        mapped = {"fn": fn, "fn_constructor_kwargs": kwargs, "compute": ray.data.ActorPoolStrategy(size=actors)}
    else:
        kwargs.update(scorer=fn, evaluation=uuid.uuid4().hex)
        mapped = {"fn": _score_batch, "fn_kwargs": kwargs, "compute": ray.data.TaskPoolStrategy(size=actors)}
    return ds.map_batches(
        **mapped,
        batch_size=None if pool == "tasks" else batch_size,
        batch_format="numpy",
        num_cpus=1,
        num_gpus=1 if use_gpu else 0,
    )


_LOADED: dict[str, Any] = {}
"""This worker process's model for the evaluation in progress: ``{"evaluation": id, "scorer": Predictor}``."""


def _score_batch(
    batch: dict[str, np.ndarray], scorer: type, source: dict[str, Any], use_gpu: bool, evaluation: str
) -> dict[str, np.ndarray]:
    """Ray Data task: score ``batch`` with this process's model, built once per evaluation.

    The model is kept under the evaluation's id, so the next evaluation (perhaps of a rewritten checkpoint at the
    same path) reads its checkpoint again, and an idle process holds one model at most.
    """
    if _LOADED.get("evaluation") != evaluation:
        _LOADED.clear()
        _LOADED.update(evaluation=evaluation, scorer=scorer(source, use_gpu))
    return _LOADED["scorer"](batch)


def confusion(predictions: pd.DataFrame, classes: int = 10) -> np.ndarray:
    """Counts[true, predicted] as a (classes, classes) int array."""
    flat = predictions["label"].to_numpy() * classes + predictions["predicted"].to_numpy()
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def per_class(matrix: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a confusion matrix."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame(
        {"digit": np.arange(len(tp)), "precision": precision, "recall": recall, "f1": f1, "support": actual}
    )


def digit_errors(predictions: pd.DataFrame, classes: int = 10) -> pd.DataFrame:
    """Mistakes per true digit, in ascending order of errors (as the notebook ranked them)."""
    totals = np.bincount(predictions["label"], minlength=classes)
    errors = np.bincount(predictions.loc[~predictions["correct"], "label"], minlength=classes)
    table = pd.DataFrame({"digit": np.arange(classes), "errors": errors, "total": totals})
    table["error_rate"] = table["errors"] / table["total"].clip(lower=1)
    table = table.sort_values(["errors", "digit"], ignore_index=True)
    table["rank"] = np.arange(1, classes + 1)
    return table


def summary_metrics(predictions: pd.DataFrame, classes: int = 10) -> dict[str, float]:
    """Accuracy, mean cross-entropy and macro precision/recall/F1."""
    classes = per_class(confusion(predictions, classes))
    return {
        "n": len(predictions),
        "accuracy": float(predictions["correct"].mean()),
        "loss": float(predictions["loss"].mean()),
        "macro_precision": float(classes["precision"].mean()),
        "macro_recall": float(classes["recall"].mean()),
        "macro_f1": float(classes["f1"].mean()),
    }
