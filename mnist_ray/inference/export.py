"""Serving exports: a checkpoint as a self-contained ``torch.export`` program (``model.pt2``) and as ONNX.

An export runs without mnist_ray: plain ``torch`` loads ``model.pt2`` (``torch.export.load(f).module()``) and
``onnxruntime`` loads ``model.onnx``. Both take ``images``: float32 (N, 1, 28, 28), raw pixel values 0..255
(an IDX or PNG image's bytes as floats, light digit on dark like MNIST), apply the training normalisation
themselves, and return ``logits``: float32 (N, 10); argmax is the class. N is any batch size. Raw pixels go in
so that no client has to know the mean and std, the one step a serving team would otherwise get subtly wrong.

Every file is loaded back and checked against the checkpoint's own model before the folder is published;
``export.json`` beside the files says what goes in and out and where the weights came from.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_ray import data
from mnist_ray.errors import MnistRayError
from mnist_ray.inference import scoring
from mnist_ray.training import checkpoints, models

log = logging.getLogger(__name__)

FORMATS = {"pt2": "model.pt2", "onnx": "model.onnx"}
"""Export formats and the file each writes."""
METADATA = "export.json"
"""Written beside the exports: input/output spec, classes, normalisation, source checkpoint, versions."""
INPUT, OUTPUT = "images", "logits"
"""Names of the program's input and output (the ONNX graph's, and the ones export.json documents)."""
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
"""The ``[onnx]`` extra: torch's ONNX exporter needs onnx and onnxscript; the export is checked with onnxruntime."""
INSTALL_ONNX = "pip install '.[onnx]'"
CHECK_IMAGES = 64
"""Seeded random images every export is checked on against the checkpoint's model."""
TOLERANCE = 1e-4
"""Largest log-probability difference accepted between an export and the evaluation's scoring of its checkpoint."""


class ExportError(MnistRayError):
    """An export cannot be made or does not reproduce its checkpoint; the message names the fix."""


class ServingModel(nn.Module):
    """A trained model behind the normalisation it was trained with: raw pixels 0..255 in, logits out."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, float(mean), float(std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of float32 images (N, 1, 28, 28) in 0..255; the same arithmetic as ``data.normalize``."""
        return self.model(images.div(255.0).sub(self.mean).div(self.std))


def normalization(state: dict[str, Any]) -> tuple[float, float]:
    """(mean, std) the checkpoint's model was trained with, after scaling pixels to [0, 1]."""
    stats = checkpoints.normalization(state)
    return float(stats.mean), float(stats.std)


def class_names(dataset: str) -> list[str]:
    """Class names by label index, from the dataset registry (MNIST's are its digits)."""
    return list(data.DATASET_INFO[dataset].classes)


class ServingEnsemble(nn.Module):
    """Several serving models as one: the log of their mean probability is its ``logits`` (its own log-softmax)."""

    def __init__(self, members: list[ServingModel]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return scoring.log_mean_probability([torch.log_softmax(member(images), 1) for member in self.members])


def serving_model(states: Sequence[dict[str, Any]]) -> nn.Module:
    """The checkpoint's model (eval mode) wrapped in the normalisation it was trained with; several checkpoints:
    their ensemble."""
    wrapped = [ServingModel(checkpoints.build_model(s), *normalization(s)) for s in states]
    return (wrapped[0] if len(wrapped) == 1 else ServingEnsemble(wrapped)).eval()


def parse_formats(value: str) -> tuple[str, ...]:
    """``pt2``, ``onnx`` or ``all`` as the formats to write; anything else is an ExportError naming the choices."""
    if value == "all":
        return tuple(FORMATS)
    if value not in FORMATS:
        raise ExportError(f"unknown export format {value!r}: pass --format {', '.join([*FORMATS, 'all'])}")
    return (value,)


def check_onnx_available() -> None:
    """Fail before any work when the ``[onnx]`` extra is not installed, saying how to install it."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"ONNX export needs {', '.join(missing)} (the [onnx] extra): run {INSTALL_ONNX} in the project, "
            "or pass --format pt2"
        )


def _example() -> torch.Tensor:
    """The example batch export traces with: two images (a batch of 1 would be specialised, not left dynamic)."""
    return torch.zeros(2, 1, 28, 28)


def _batch() -> dict[str, dict[int, Any]]:
    """The dynamic batch dimension of the input, named ``batch`` (also the ONNX graph's axis name)."""
    return {INPUT: {0: torch.export.Dim("batch", min=1)}}


def write_pt2(module: ServingModel, path: Path) -> None:
    """Export ``module`` with ``torch.export`` (dynamic batch) and save the program to ``path``."""
    program = torch.export.export(module, (_example(),), dynamic_shapes=_batch())
    torch.export.save(program, path)


@contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Hold ``loggers`` at WARNING: the ONNX optimiser logs each of its passes at INFO, which jobs print."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def write_onnx(module: ServingModel, path: Path) -> None:
    """Export ``module`` with torch's ONNX exporter (the torch.export-based one) to one self-contained file."""
    with _quiet("onnxscript", "onnx_ir"):
        torch.onnx.export(
            module,
            (_example(),),
            f=str(path),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=_batch(),
            external_data=False,  # the weights inside the .onnx file, not in a .onnx.data beside it
            verbose=False,
        )


def load_logits(fmt: str, path: Path, images: np.ndarray) -> np.ndarray:
    """Logits of float32 ``images`` (N, 1, 28, 28) from an export file, loaded as a serving team would."""
    if fmt == "pt2":
        with torch.inference_mode():
            return torch.export.load(path).module()(torch.from_numpy(images)).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], {INPUT: images})[0]


def reference_log_probs(members: Sequence[str], pixels: np.ndarray) -> np.ndarray:
    """Log-probabilities of uint8 images (N, 28, 28) from the evaluation's own scorer, its preprocessing included,
    of the checkpoint ``members`` (one, or an ensemble's)."""
    scorer = scoring.Predictor({"paths": list(members)}, threads=torch.get_num_threads())
    return scorer.log_probs(pixels).numpy()


def check_export(fmt: str, path: Path, pixels: np.ndarray, want: np.ndarray) -> float:
    """Load ``path`` back and score uint8 ``pixels`` with it; the largest difference from ``want``.

    ``want`` comes from :func:`reference_log_probs`, so an export whose weights or normalisation differ
    from what the evaluation job scores fails here rather than in serving.
    """
    logits = torch.from_numpy(load_logits(fmt, path, pixels[:, None].astype(np.float32)))
    got = torch.log_softmax(logits, 1).numpy()
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ExportError(
            f"{path.name} does not reproduce the checkpoint (largest log-probability difference {diff:.3g})"
        )
    return diff


def _versions(folder: Path, formats: tuple[str, ...]) -> dict[str, str | int]:
    """Versions of the packages that made (and checked) the exports, and the ONNX file's opset."""
    names = ["torch", *(ONNX_PACKAGES if "onnx" in formats else ())]
    versions: dict[str, str | int] = {name: importlib.metadata.version(name) for name in names}
    if "onnx" in formats:
        import onnx

        graph = onnx.load(str(folder / FORMATS["onnx"]), load_external_data=False)
        versions["onnx_opset"] = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    return versions


def _source(state: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """Where one model's weights came from."""
    best = max((h.get("val_acc", 0.0) for h in state["history"]), default=None)
    return {
        "checkpoint": checkpoint,
        "model": state["model"],
        "dataset": state["dataset"],
        "epoch": state["epoch"],
        "best_val_acc": best,
    }


def metadata(states: Sequence[dict[str, Any]], members: Sequence[str], folder: Path, diffs: dict[str, float]) -> dict:
    """The contents of export.json: how to call the exports and where their weights came from (an ensemble: each
    member's, under ``members``).

    ``diffs``: by format, the largest difference :func:`check_export` found.
    """
    state = states[0]
    mean, std = normalization(state)
    sources = [_source(s, m) for s, m in zip(states, members, strict=True)]
    return {
        "files": {fmt: FORMATS[fmt] for fmt in diffs},
        "input": {"name": INPUT, "dtype": "float32", "shape": ["batch", 1, 28, 28], "pixel_range": [0, 255]},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", models.NUM_CLASSES], "meaning": "logits"},
        "classes": class_names(state["dataset"]),
        "normalization": {"mean": mean, "std": std, "applied": "inside the model: (images / 255 - mean) / std"},
        "source": sources[0]
        if len(sources) == 1
        else {"ensemble": "mean of the members' probabilities", "members": sources},
        "checked": {"images": CHECK_IMAGES, "max_abs_log_probability_difference": diffs},
        "versions": _versions(folder, tuple(diffs)),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export(
    states: Sequence[dict[str, Any]], members: Sequence[str], formats: tuple[str, ...], folder: Path
) -> dict[str, Any]:
    """Write each format and export.json into the local ``folder``, each file checked; the metadata written.

    ``members`` are where ``states`` were loaded from (one checkpoint, or an ensemble's): the evaluation's scorer
    reads them for the check.
    """
    module = serving_model(states)
    writers = {"pt2": write_pt2, "onnx": write_onnx}
    pixels = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, 28, 28), dtype=np.uint8)
    want = reference_log_probs(members, pixels)
    diffs: dict[str, float] = {}
    for fmt in formats:
        path = folder / FORMATS[fmt]
        writers[fmt](module, path)
        diffs[fmt] = check_export(fmt, path, pixels, want)
        log.debug("%s: largest logit difference %.3g", path.name, diffs[fmt])
    meta = metadata(states, members, folder, diffs)
    (folder / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
