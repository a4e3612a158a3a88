"""Typed configuration: one dataclass per concern, the single source of every setting.

Each field is declared once, with its type, default and a docstring beneath it; the command-line
flags, their help and their defaults are derived from these classes (:mod:`mnist_ray.settings.cli`).
Config travels as dataclasses until the Ray boundary, where it becomes a plain dict (``asdict``)
and is rebuilt inside each worker with :meth:`TrainConfig.from_dict`. Every check a user can
fail runs in ``__post_init__``: one rule per field (:mod:`mnist_ray.settings.rules`, with the intervals each class
declares in ``RANGES``), then the checks that relate fields, so bad values stop the job before Ray starts with a
message that names the flag to fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from mnist_ray.cluster import layout
from mnist_ray.data import TRAIN_IMAGES
from mnist_ray.errors import ConfigError
from mnist_ray.files import folders
from mnist_ray.settings.rules import Interval, check_name, checked_fields, read_config_file, validate_fields


@dataclass(frozen=True)
class TrainConfig:
    """Everything the training loop needs; identical on every worker."""

    RANGES: ClassVar[dict[str, Interval]] = {
        "lr": (0, 10, "(]"),
        "weight_decay": (0, 1, "[]"),
        "momentum": (0, 1, "[)"),
        "epochs": (1, 10_000, "[]"),
        "batch_size": (1, TRAIN_IMAGES, "[]"),
        "val_size": (1, TRAIN_IMAGES, "[)"),
        "train_limit": (0, TRAIN_IMAGES, "[]"),
        "label_smoothing": (0, 1, "[)"),
        "elastic": (0, 8, "[]"),
        "ema": (0, 1, "[)"),
        "dropout": (0, 1, "[)"),
        "num_workers": (1, 4096, "[]"),
        "cpus_per_worker": (1, 1024, "[]"),
        "gpus_per_worker": (0, 1, "(]"),
        "seed": (0, 2**32 - 1, "[]"),
    }

    model: str = "cnn"
    """Architecture from the model registry: cnn (conv + batch norm + pooling), cnn_wide (twice the channels),
    cnn_deep (two convs per stage) or ann (784-512-256-10)."""
    dataset: str = "mnist"
    """Dataset: mnist (ships with the package) or fashion-mnist."""
    optimizer: str = "adamw"
    """Optimizer: sgd (Nesterov momentum), adam, adamw or rmsprop."""
    lr: float = 4e-3
    """Peak learning rate (the one-cycle maximum, or the constant rate with schedule none)."""
    weight_decay: float = 5e-4
    """L2 / decoupled weight decay on weights; not applied to biases and norm parameters."""
    momentum: float = 0.9
    """Momentum for sgd and rmsprop."""
    schedule: str = "onecycle"
    """Learning-rate schedule: none, onecycle (warm-up then cosine decay) or cosine."""
    epochs: int = 12
    """Passes over the training split."""
    batch_size: int = 128
    """Global batch size, split evenly across workers."""
    val_size: int = 5000
    """Images held out of the 60k training set (seeded) for validation and model selection."""
    train_limit: int = 0
    """Use only the first N shuffled training images (0 = all); for smoke runs and tests."""
    augment: bool = True
    """Random affine augmentation (±10° rotation, ±10% scale, ±2 px shift) on the training split only."""
    elastic: float = 0.0
    """Elastic distortion with augment: a smooth random displacement of up to this many pixels per point
    (0 = off; the affine part alone)."""
    ema: float = 0.0
    """Decay of an exponential moving average of the weights and batch-norm statistics, updated every step
    (e.g. 0.999); the average is what is validated and checkpointed (0 = off: the trained weights themselves)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing in [0, 1)."""
    dropout: float = 0.25
    """Dropout before the classifier head."""
    num_workers: int = 1
    """Ray Train workers (data-parallel replicas); auto: one per GPU, else one per node (mnist_ray.cluster.layout)."""
    cpus_per_worker: int = 1
    """CPUs reserved per worker, also its torch thread count; auto: the node's CPUs (1 with GPUs, at most 16)."""
    use_gpu: bool = False
    """Train on GPUs (bf16 autocast on CUDA); auto: when the cluster has a GPU."""
    gpus_per_worker: float = 1.0
    """GPU share per worker with --use-gpu: 1 = a GPU each; 0.5 lets two workers share one (use gloo)."""
    ddp_backend: str = "auto"
    """torch.distributed backend: auto (nccl on GPUs, gloo on CPUs), gloo or nccl (one GPU per worker)."""
    seed: int = 0
    """Seed for the split, initialisation, shuffling and augmentation."""
    channels_last: bool = True
    """NHWC memory layout for the conv weights and activations: the fast one for oneDNN on a CPU and cuDNN on a GPU
    (same model, float rounding differs)."""

    def __post_init__(self) -> None:
        validate_fields(self)
        train_images = (TRAIN_IMAGES - self.val_size) if not self.train_limit else self.train_limit
        if self.val_size < self.num_workers:
            raise ConfigError(
                f"val_size {self.val_size} gives a worker no validation images: use --val-size >= "
                f"--num-workers ({self.num_workers})"
            )
        if train_images < self.batch_size:
            raise ConfigError(
                f"{train_images} training images (60000 - --val-size, or --train-limit) are fewer than one batch "
                f"of {self.batch_size}: lower --batch-size or --val-size, or raise --train-limit"
            )
        if self.batch_size < self.num_workers:
            raise ConfigError(
                f"batch_size {self.batch_size} is below num_workers {self.num_workers}: "
                "each worker needs at least one image per step; raise --batch-size or lower --num-workers"
            )
        if self.batch_size % self.num_workers:
            raise ConfigError(
                f"batch_size {self.batch_size} does not split evenly over {self.num_workers} workers: "
                "use a multiple of --num-workers"
            )
        if self.elastic and not self.augment:
            raise ConfigError("elastic distortion is part of augmentation: pass --augment yes, or drop --elastic")
        if self.ddp_backend == "nccl" and self.use_gpu and self.gpus_per_worker < 1 and self.num_workers > 1:
            raise ConfigError("nccl needs one GPU per worker: use --ddp-backend gloo with --gpus-per-worker < 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict, rejecting unknown keys and wrong types by name."""
        return cls(**checked_fields(cls, values))

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, JSON-serialisable and accepted by :meth:`from_dict`."""
        return asdict(self)

    def with_updates(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated again)."""
        return replace(self, **changes)

    @property
    def per_worker_batch(self) -> int:
        """Images each worker processes per optimizer step."""
        return self.batch_size // self.num_workers


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"epochs": 2, "augment": False, "lr": 5e-3},
    "best": {"epochs": 30, "model": "cnn_deep"},
    "smoke": {"epochs": 2, "train_limit": 2048, "val_size": 512, "batch_size": 64},
    # One GPU. The small CNN is launch-bound there (a step takes about as long whatever the batch), so a larger
    # batch trains more images per second; with the lr sqrt-scaled, batch 1024 keeps about the same accuracy
    # (docs/gpu.md).
    "gpu": {"use_gpu": True, "num_workers": 1, "batch_size": 1024, "lr": 1.1e-2, "epochs": 30},
}
"""Named recipes: default reaches >= 99.4% on 2 CPU cores in under 5 minutes; fast is the shortest
recipe above 99.0%; best trades time for accuracy (the deeper CNN, 30 epochs: about 12 minutes on 2 cores);
smoke runs the whole path in seconds."""


def load_config(
    preset: str = "default",
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge a job's ``base`` values, a preset, a JSON file and flag overrides (later wins) into a config."""
    return load_with_request(preset, path, overrides, base)[0]


def load_with_request(
    preset: str = "default",
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> tuple[TrainConfig, layout.Request]:
    """:func:`load_config`, and what it left to the cluster: the fields that are ``auto`` or set by nobody.

    An auto layout field keeps the dataclass default (one CPU worker, which any batch splits over) until
    :func:`mnist_ray.cluster.layout.resolve` decides it on the cluster.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    flags = overrides or {}
    file = read_config_file(path) if path is not None else {}
    given = {k: v for k, v in flags.items() if v is not None and v != layout.AUTO}
    values: dict[str, Any] = {**(base or {}), **PRESETS[preset], **file, **given}
    return TrainConfig.from_dict(values), layout.request(flags, PRESETS[preset], file, base or {})


@dataclass(frozen=True)
class Tracking:
    """Where a job logs its parameters, metrics and artifacts; see :mod:`mnist_ray.reports.tracking`."""

    mlflow_uri: str | None = None
    """MLflow tracking URI, e.g. sqlite:///mlruns/mlflow.db or http://host:5000 (default: $MLFLOW_TRACKING_URI)."""


@dataclass(frozen=True)
class RunOptions(Tracking):
    """Where a run lives and how Ray Train treats it; not part of the model's identity."""

    RANGES: ClassVar[dict[str, Interval]] = {"max_failures": (0, 1000, "[]"), "keep_checkpoints": (1, 1000, "[]")}

    name: str = "mnist"
    """Run name; re-running with the same name resumes from its last checkpoint."""
    output: str = folders.DEFAULT_RUNS
    """Folder or URI (s3://bucket/prefix) for the run's outputs: <output>/<name>/."""
    storage_path: str | None = None
    """Ray Train checkpoint storage (a path every node reaches, or s3://bucket/prefix); default: --output."""
    data_dir: str | None = None
    """Folder holding the four IDX files (raw or .gz); default: the dataset's built-in location."""
    max_failures: int = 2
    """Worker-group restarts Ray Train allows after a lost worker before giving up."""
    keep_checkpoints: int = 2
    """Best checkpoints kept by validation accuracy (the latest is always kept too)."""
    wait_for_resources: bool = False
    """Skip the fail-fast layout check: an autoscaling cluster will add the nodes the run asks for."""

    def __post_init__(self) -> None:
        check_name("run name", self.name)
        validate_fields(self)

    @property
    def folder(self) -> folders.RunFolder:
        """The run's folder ``<output>/<name>``, and its checkpoints' ``<storage_path or output>/<name>``."""
        return folders.RunFolder.of(self.output, self.name, self.storage_path)


@dataclass(frozen=True)
class RayOptions:
    """How a job reaches Ray; see :func:`mnist_ray.cluster.connection.connect`."""

    RANGES: ClassVar[dict[str, Interval]] = {"num_cpus": (1, 100_000, "[]")}

    num_cpus: int | None = None
    """CPUs for a new local Ray instance (ignored when joining a cluster); default: all of this machine's."""
    verbose: bool = False
    """Show Ray's own logs and progress bars."""
    dashboard: bool = False
    """Start Ray's dashboard with a new local instance (its web UI and state API); a sweep always starts it."""

    def __post_init__(self) -> None:
        validate_fields(self)
