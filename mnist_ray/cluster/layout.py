"""``auto``: the training and inference layout chosen from the cluster a job lands on.

``--num-workers``, ``--cpus-per-worker`` and ``--use-gpu`` (train) and ``--use-gpu`` and ``--actors`` (evaluate,
predict) default to ``auto``. A job decides them once Ray is up, from the nodes that exist, and prints one line
saying what it chose and why. The rules:

- **GPUs** (any node has one): one worker per GPU, one CPU each; with the recipe left at the default preset,
  the ``gpu`` preset's batch size, learning rate and epochs (batch 1024: the small CNN is launch-bound on a GPU).
- **No GPU**: one worker per node using that node's CPUs, so one machine trains in one process with all its cores
  (faster than two processes splitting them: the all-reduce of every step waits on the slower one) and a
  multi-node CPU cluster is data-parallel across nodes. Ray Train gives every worker the same resources, so with
  nodes of different sizes a worker takes the smallest node's CPUs and a larger node runs as many as fit.
  A worker uses at most :data:`MAX_THREADS` threads (one process of very many threads scales worse than two).
- The global batch must split evenly: auto takes the largest worker count that divides it.
- Explicit values win. A resumed run keeps the layout it started with (:func:`adopt`). A sweep keeps its own
  per-trial rule (:func:`mnist_ray.training.sweep.fit_layout`); auto there only decides ``use_gpu``.
- With ``--wait-for-resources`` (an autoscaling cluster whose nodes may not exist yet) auto cannot see the
  layout to come: the job asks for an explicit ``--num-workers`` and ``--use-gpu`` / ``--no-use-gpu``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_ray.errors import ConfigError

AUTO = "auto"
"""The value of a field left to the cluster."""
FIELDS = ("num_workers", "cpus_per_worker", "use_gpu")
"""TrainConfig fields that ``auto`` decides."""
GPU_RECIPE = ("batch_size", "lr", "epochs")
"""Recipe fields the ``gpu`` preset sets, applied with auto GPUs only when none of them was set otherwise."""
MAX_THREADS = 16
"""Most CPUs (torch threads) auto gives one worker; a bigger node runs several workers."""


@dataclass(frozen=True)
class Request:
    """What a training job left to the cluster: the layout fields set to auto and the recipe fields left unset."""

    auto: frozenset[str] = frozenset()
    open_recipe: frozenset[str] = frozenset()

    @property
    def gpu_recipe(self) -> bool:
        """True if auto GPUs may bring the ``gpu`` preset's recipe: no recipe field was set by anyone."""
        return self.open_recipe == frozenset(GPU_RECIPE)


def request(flags: dict[str, Any], preset: dict[str, Any], file: dict[str, Any], base: dict[str, Any]) -> Request:
    """The Request of a command line: ``flags`` (None when not given), the preset's, the --config file's and the
    job's own values. A field is auto when its flag says ``auto``, or nothing sets it."""
    given = {k for k, v in flags.items() if v is not None and v != AUTO} | set(preset) | set(file) | set(base)
    auto = {f for f in FIELDS if flags.get(f) == AUTO or f not in given}
    return Request(frozenset(auto), frozenset(f for f in GPU_RECIPE if f not in given))


def for_autoscaling(req: Request, wait_for_resources: bool) -> Request:
    """An autoscaling cluster's nodes may not exist yet, so auto cannot size the run from the nodes up now: the
    worker count and GPU choice must be given, and auto CPUs per worker mean one."""
    if not wait_for_resources:
        return req
    if {"num_workers", "use_gpu"} & req.auto:
        raise ConfigError(
            "--wait-for-resources: auto sees only the nodes that exist now, not those the autoscaler will add; "
            "pass --num-workers N and --use-gpu or --no-use-gpu"
        )
    return Request(req.auto - {"cpus_per_worker"}, req.open_recipe)


def adopt(cfg: Any, req: Request, previous: Any | None) -> tuple[Any, Request]:
    """A resumed run keeps what it started with: its auto layout fields and its unset recipe fields."""
    if previous is None:
        return cfg, req
    kept = {f: getattr(previous, f) for f in (*req.auto, *req.open_recipe)}
    return cfg.with_updates(**kept), Request()


@dataclass(frozen=True)
class Node:
    """An alive Ray node's CPUs and GPUs."""

    cpus: float
    gpus: float


def nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster."""
    import ray

    return [Node(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in ray.nodes() if n["Alive"]]


def resolve(cfg: Any, req: Request, found: list[Node] | None = None) -> tuple[Any, str | None]:
    """``cfg`` with its auto fields decided from the cluster's nodes, and the line that says so (None: no auto)."""
    if not req.auto:
        return cfg, None
    found = nodes() if found is None else found
    gpus = sum(n.gpus for n in found)
    use_gpu = gpus >= 1 if "use_gpu" in req.auto else cfg.use_gpu
    changes: dict[str, Any] = {"use_gpu": use_gpu}
    if use_gpu and req.gpu_recipe:
        from mnist_ray.settings.config import PRESETS

        changes.update({f: PRESETS["gpu"][f] for f in GPU_RECIPE})
    batch = changes.get("batch_size", cfg.batch_size)
    if use_gpu:
        cpus = 1 if "cpus_per_worker" in req.auto else cfg.cpus_per_worker
        fit = int(gpus // cfg.gpus_per_worker)
    else:
        cpus = (
            _cpus_per_worker(found, cfg.num_workers, "num_workers" in req.auto)
            if "cpus_per_worker" in req.auto
            else cfg.cpus_per_worker
        )
        fit = sum(int(n.cpus // cpus) for n in found)
    workers, notes = cfg.num_workers, []
    if "num_workers" in req.auto:
        workers = _divisor_at_most(batch, max(fit, 1))
        if workers < fit:
            notes.append(f"batch {batch} does not split over {fit}")
    changes.update(num_workers=workers, cpus_per_worker=cpus)
    if use_gpu and req.gpu_recipe:
        notes.append("gpu preset's batch, lr and epochs")
    return cfg.with_updates(**changes), _line(workers, cpus, use_gpu, cfg.gpus_per_worker, found, notes)


def _cpus_per_worker(found: list[Node], workers: int, workers_auto: bool) -> int:
    """CPUs per worker: the smallest CPU node's (one worker per node), or with a given worker count the most that
    still places them all; never more than :data:`MAX_THREADS`."""
    sizes = sorted(int(n.cpus) for n in found if n.cpus >= 1) or [1]
    if workers_auto:
        return min(sizes[0], MAX_THREADS)
    best = 1
    for c in range(1, min(max(sizes), MAX_THREADS) + 1):
        if sum(s // c for s in sizes) >= workers:
            best = c
    return best


def _divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit``."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _line(workers: int, cpus: int, use_gpu: bool, gpu_share: float, found: list[Node], notes: list[str]) -> str:
    """``auto: 1 worker x 2 CPUs (1 node, no GPU)``."""
    s = "s" if workers > 1 else ""
    gpu = f" + {gpu_share:g} GPU" if use_gpu else ""
    gpus = sum(n.gpus for n in found)
    seen = f"{len(found)} node{'s' if len(found) > 1 else ''}, " + (
        f"{gpus:g} GPU{'s' if gpus > 1 else ''}" if gpus else "no GPU"
    )
    return f"auto: {workers} worker{s} x {cpus} CPU{'s' if cpus > 1 else ''}{gpu} ({'; '.join([seen, *notes])})"


def gpu_if_any(cfg: Any, found: list[Node] | None = None) -> Any:
    """A sweep's auto ``use_gpu``: its trials train on GPUs when the cluster has one (their count is the sweep's)."""
    found = nodes() if found is None else found
    return cfg.with_updates(use_gpu=sum(n.gpus for n in found) >= 1)


def inference(use_gpu: bool | str, actors: int | str, found: list[Node] | None = None) -> tuple[bool, int, str | None]:
    """Evaluate's and predict's ``--use-gpu`` and ``--actors``: auto GPU when the cluster has one; auto replicas one
    per GPU, or one per CPU (each scoring task takes one CPU). Returns them and a line when auto decided any."""
    if AUTO not in (use_gpu, actors):
        return bool(use_gpu), int(actors), None
    found = nodes() if found is None else found
    gpus, cpus = sum(n.gpus for n in found), sum(n.cpus for n in found)
    gpu = gpus >= 1 if use_gpu == AUTO else bool(use_gpu)
    n = max(1, int(gpus if gpu else cpus)) if actors == AUTO else int(actors)
    unit = "GPU" if gpu else "CPU"
    return gpu, n, f"auto: {n} scoring replica{'s' if n > 1 else ''} of 1 {unit} ({cpus:g} CPUs, {gpus:g} GPUs)"
