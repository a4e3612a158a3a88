"""Model replicas scoring images on Ray Data: the inference the evaluation and the prediction jobs share.

Inference runs as ``map_batches`` in Ray tasks on CPUs: each worker process loads the model once per evaluation
and scores many batches (a GPU evaluation keeps an actor pool: see :func:`score`). Tasks, not an actor pool,
because Ray reuses its idle worker processes for tasks: a process that imported torch for one evaluation scores
the next one at once, where an actor pool starts fresh processes for every evaluation, and starting them takes
most of a call's time (``python -m bench.eval_pool`` compares the two).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mnist_ray import data
from mnist_ray.cluster import connection
from mnist_ray.errors import ResourceError
from mnist_ray.files import storage
from mnist_ray.inference import pipeline
from mnist_ray.ray_workarounds import loggers
from mnist_ray.settings.rules import Interval
from mnist_ray.training import checkpoints, models


@dataclass(frozen=True)
class ScoringOptions:
    """How a job's model replicas score (a base class of the evaluation's and the prediction's options)."""

    RANGES: ClassVar[dict[str, Interval]] = {"actors": (1, 1024, "[]"), "batch_size": (1, 2**20, "[]")}

    use_gpu: bool | str = "auto"
    """One GPU per inference actor; auto: when the cluster has a GPU."""
    actors: int | str = "auto"
    """Model replicas scoring at once: Ray Data tasks of one CPU each, or actors of one GPU each with --use-gpu;
    auto: one per CPU, or one per GPU."""
    batch_size: int = 1000
    """Images per inference batch of a GPU actor (a CPU task scores its whole unit, in chunks of 256)."""


CPU_CHUNK = 256
"""Images per forward pass on a CPU: chunks of 256 keep the activations in cache, where batches of 1,000 do not."""


def log_mean_probability(log_probs: Sequence[Any]) -> Any:
    """An ensemble's log-probabilities: the log of the mean of its members' probabilities, from their
    log-probabilities (tensors of one shape); one member's come back unchanged. The scorer and the exported ensemble
    both use it."""
    import torch

    if len(log_probs) == 1:
        return log_probs[0]
    return torch.logsumexp(torch.stack(list(log_probs)), 0) - math.log(len(log_probs))


class Predictor:
    """Holds the model (or an ensemble's members) and maps a batch of images to predictions: one per worker process
    and evaluation.

    Each process reads the checkpoints itself (paths every node reaches: one node, or URIs), so no large argument
    goes through the object store; only a multi-node cluster with checkpoints on the driver's local disk gets the
    states as object-store references instead. An ensemble's prediction is the mean of its members' probabilities.
    """

    def __init__(self, source: dict[str, Any], use_gpu: bool = False, threads: int = 1) -> None:
        import ray
        import torch

        models.set_cpu_threads(threads)
        self.torch = torch
        self.device = torch.device("cuda" if use_gpu else "cpu")
        states = [checkpoints.load(p) for p in source["paths"]] if "paths" in source else ray.get(source["refs"])
        # NHWC: oneDNN's and cuDNN's fast layout
        self.models = [checkpoints.build_model(s).to(self.device, memory_format=torch.channels_last) for s in states]
        self.stats = [checkpoints.normalization(s) for s in states]  # the statistics each was trained with
        self.chunk = None if use_gpu else CPU_CHUNK

    def log_probs(self, images: np.ndarray) -> Any:
        """Log-probabilities (N, classes) of uint8 (N, 28, 28) images, a tensor on the model's device; of an
        ensemble, the log of its members' mean probability.

        On a CPU the batch goes through each model in chunks of :data:`CPU_CHUNK` images; a GPU takes it whole.
        """
        each = [self._log_probs(model, stats, images) for model, stats in zip(self.models, self.stats, strict=True)]
        return log_mean_probability(each)

    def _log_probs(self, model: Any, stats: data.Normalization, images: np.ndarray) -> Any:
        torch = self.torch
        step = self.chunk or len(images)  # normalised a chunk at a time on a CPU: its floats stay in cache
        parts = (data.normalize(images[i : i + step], stats).to(self.device) for i in range(0, len(images), step))
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = torch.cat([model(part).float() for part in parts])
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


def score(
    units: list[dict[str, Any]],
    local: bool,
    members: Sequence[str],
    states: Sequence[dict[str, Any]],
    fn: type = Predictor,
    use_gpu: bool = False,
    actors: int = 2,
    batch_size: int = 1000,
    progress: bool = False,
    pool: str | None = None,
) -> Any:
    """The images of ``units`` (:func:`mnist_ray.inference.pipeline.dataset`; ``local``: files on the driver's disk)
    mapped through ``fn``, ``actors`` replicas at once, of the model in the checkpoint ``members`` (one, or an
    ensemble's), loaded as ``states``.

    ``fn`` is :class:`Predictor` or a subclass (the prediction job's). ``pool`` is ``"tasks"`` on CPUs and
    ``"actors"`` (a pool of ``actors`` replicas) with ``use_gpu``: Ray runs a GPU function's process for one call
    only (``max_calls=1``), so GPU tasks would start a process and initialise CUDA per block, and the GPU path
    keeps the actor pool (docs/gpu.md). ``bench/eval_pool.py`` compares the two on CPUs.
    Returns the mapped dataset, lazily: consuming it runs the pipeline.
    """
    import uuid

    import ray

    if use_gpu and ray.cluster_resources().get("GPU", 0) < 1:
        raise ResourceError("--use-gpu: this Ray cluster has no GPU; drop --use-gpu")
    ray.data.DataContext.get_current().enable_progress_bars = progress
    loggers.show_ray_data_progress(progress)
    local_only = not all(storage.is_uri(m) for m in members) and connection.alive_nodes() > 1
    source = {"refs": [ray.put(s) for s in states]} if local_only else {"paths": list(members)}
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
