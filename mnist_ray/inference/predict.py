"""Batch prediction on new images with a trained checkpoint, on the evaluation's Ray Data inference.

Ray Data tasks read the input's files (:mod:`mnist_ray.inference.decoding`: decoded and framed like MNIST, a bad
file a row with its reason) and score them with the evaluation's model replicas
(:func:`mnist_ray.inference.scoring.score`); the predictions, which hold no images, are written as ordered
Parquet parts into a staging folder and published whole. An input with no readable image at all is bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.fs as pafs

from mnist_ray.errors import DataError
from mnist_ray.files import folders, publishing, storage
from mnist_ray.inference import pipeline, scoring
from mnist_ray.ray_workarounds import output

log = logging.getLogger(__name__)

TOP = 3
"""Classes listed per image, most probable first."""
SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("predicted", pa.int64()),
        ("confidence", pa.float64()),
        ("top3", pa.list_(pa.int64())),
        ("top3_confidence", pa.list_(pa.float64())),
        ("error", pa.string()),
    ]
)
"""``predictions.parquet``: one row per image; an unreadable one has a null prediction and the reason in error."""


class ImagePredictor(scoring.Predictor):
    """The evaluation's Ray Data predictor without labels: predicted class, its probability and the top 3.

    Rows the reader could not use (``error`` set) pass through with null predictions, so the output keeps one row
    per input image, in order, in :data:`SCHEMA`.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        errors = [e if isinstance(e, str) else None for e in batch["error"]]  # an all-null column arrives as NaN
        bad = np.array([e is not None for e in errors], dtype=bool)
        n = len(bad)
        predicted, confidence = np.zeros(n, np.int64), np.zeros(n)
        top_k, top_p = np.zeros((n, TOP), np.int64), np.zeros((n, TOP))
        if not bad.all():
            probs = self.log_probs(batch["image"][~bad]).exp()
            conf, pred = probs.max(1)  # as the evaluation picks, so both agree on every image
            p, k = probs.topk(TOP, dim=1)
            predicted[~bad], confidence[~bad] = pred.cpu().numpy(), conf.cpu().numpy()
            top_k[~bad], top_p[~bad] = k.cpu().numpy(), p.cpu().numpy()
        offsets = pa.array(np.arange(0, TOP * n + 1, TOP, dtype=np.int32))
        mask = pa.array(bad)
        columns = [
            pa.array(batch["source"].tolist(), pa.string()),
            pa.array(predicted, mask=bad),
            pa.array(confidence, mask=bad),
            pa.ListArray.from_arrays(offsets, pa.array(top_k.ravel()), mask=mask),
            pa.ListArray.from_arrays(offsets, pa.array(top_p.ravel()), mask=mask),
            pa.array(errors, pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=SCHEMA)


@dataclass(frozen=True)
class Counts:
    """What a prediction published: rows scored and rows unreadable (with the first reason)."""

    scored: int
    unreadable: int
    first_error: str | None = None


def predict(
    files: list[str],
    members: Sequence[str],
    states: Sequence[dict[str, Any]],
    staging: str,
    invert: str = "auto",
    column: str = "image",
    **score: Any,
) -> Counts:
    """Read, decode, frame and score ``files`` on Ray Data (Ray must be initialised) with the model in the
    checkpoint ``members`` (one, or an ensemble's), loaded as ``states``, and write the predictions,
    in input order, as ``<staging>/predictions.parquet/part-*.parquet``; ``score`` goes to
    :func:`mnist_ray.inference.scoring.score` (use_gpu, actors, batch_size, progress)."""
    units = pipeline.file_units(files, column, invert, score.get("actors", 2))
    score["actors"] = min(score.get("actors", 2), len(units))  # never more replicas than units of work
    local = not any(storage.is_uri(f) for f in files)
    scored = scoring.score(units, local, members, states, ImagePredictor, **score)
    with output.dropping_native_lines():  # Ray Data's actor-argument line (see mnist_ray.ray_workarounds.output)
        pipeline.write(scored, folders.predictions(staging))
    return count(folders.predictions(staging))


def count(folder: str) -> Counts:
    """Rows and unreadable rows of the written part files, from their footers (no data read), and the first
    unreadable row's reason (read only when every row is unreadable, to name it)."""
    import pyarrow.parquet as pq

    fs, root = storage.filesystem(folder)
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(root)) if i.path.endswith(".parquet"))
    rows = nulls = 0
    for part in parts:
        with fs.open_input_file(part) as f:
            meta = pq.ParquetFile(f).metadata
        rows += meta.num_rows
        nulls += _nulls(fs, part, meta)
    if rows and nulls == rows:
        with fs.open_input_file(parts[0]) as f:
            first = pq.ParquetFile(f).read_row_group(0, columns=["source", "error"]).slice(0, 1).to_pylist()[0]
        return Counts(0, rows, f"{first['source']}: {first['error']}")
    return Counts(rows - nulls, nulls)


def _nulls(fs: pafs.FileSystem, part: str, meta: Any) -> int:
    """Null predictions in one part file: from its footer's statistics, or its ``predicted`` column if it has none."""
    import pyarrow.parquet as pq

    where = meta.schema.names.index("predicted")
    stats = [meta.row_group(g).column(where).statistics for g in range(meta.num_row_groups)]
    if all(s is not None and s.has_null_count for s in stats):
        return sum(s.null_count for s in stats)
    with fs.open_input_file(part) as f:
        return pq.ParquetFile(f).read(columns=["predicted"]).column(0).null_count


def publish(staging: str, target: str, counts: Counts, input_path: str, overwrite: bool = False) -> str:
    """Publish the staged predictions as ``target`` (``MANIFEST.json`` last); an input with no readable image at all
    is bad input and publishes nothing. Returns the predictions' path."""
    if counts.scored == 0:
        raise DataError(
            f"--input {storage.normalize(input_path)}: no readable image in {counts.unreadable} item(s) "
            f"(first: {counts.first_error})"
        )
    publishing.publish_staged(staging, target, overwrite)
    return folders.predictions(storage.normalize(target))
