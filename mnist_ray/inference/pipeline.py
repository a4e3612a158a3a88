"""The Ray Data pipeline evaluation and prediction share: the driver lists, the cluster reads, decodes and scores.

The driver turns its input into *units* of work, names and metadata only: a group of image files, one row group
of a Parquet file, or a slice of the IDX test set. Ray Data tasks on the cluster read each unit (local paths, or
URIs through pyarrow filesystems), decode and frame its images with the project's own decoder
(:mod:`mnist_ray.inference.decoding`; one bad file is a row with its reason, where ``ray.data.read_images`` would
fail the whole dataset), and the evaluation's model replicas score them (:func:`mnist_ray.inference.scoring.score`).
So the driver never holds the images, and every core of the cluster decodes.

Rows keep the input's order: the datasets here run with ``preserve_order``, so block ``k`` of the output is
written by write task ``k`` and part files named by task index list in input order (:func:`write`).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data.datasource import FilenameProvider

from mnist_ray.cluster import connection
from mnist_ray.files import storage

FILES_PER_UNIT = (16, 4096)
"""Fewest and most image files one read task decodes: about four units per replica in between, so a task's start
(tens of ms) is amortised and every replica stays busy, and a unit's images stay a few MB."""
PARQUET = (".parquet", ".parq", ".pq")
"""Names whose row groups become units of their own; any other Parquet file is read whole by one task."""
STRIDE = 2**32
"""``row`` of a prediction input: unit number times this, plus the position in the unit (sortable, unique)."""


def file_units(files: list[str], column: str, invert: str, replicas: int = 1) -> list[dict[str, Any]]:
    """Units for a prediction input: groups of files, and one unit per row group of a named Parquet file."""
    low, high = FILES_PER_UNIT
    per_unit = min(max(-(-len(files) // (4 * replicas)), low), high)
    units: list[dict[str, Any]] = []
    group: list[str] = []

    def flush() -> None:
        if group:
            units.append({"kind": "files", "paths": list(group)})
            group.clear()

    for path in files:
        groups = _row_groups(path, column) if path.lower().endswith(PARQUET) else None
        if groups is None:
            group.append(path)
            if len(group) == per_unit:
                flush()
            continue
        flush()
        units += [{"kind": "row_group", "path": path, "group": g, "first": first} for g, first in groups]
    flush()
    return [{**u, "unit": i, "column": column, "invert": invert} for i, u in enumerate(units)]


def _row_groups(path: str, column: str) -> list[tuple[int, int]] | None:
    """(row group, its first row) of a Parquet file with ``column``, read from its footer; None when it is not one
    (the file's own unit then reports why, row by row or as one row)."""
    import pyarrow.parquet as pq

    try:
        fs, fs_path = storage.filesystem(path)
        with fs.open_input_file(fs_path) as f:
            meta = pq.ParquetFile(f).metadata
    except (OSError, pa.ArrowException, storage.StorageError):
        return None
    if column not in meta.schema.names or meta.num_row_groups == 0:
        return None
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    return [(g, int(starts[g])) for g in range(meta.num_row_groups)]


def idx_units(images: str, labels: str, n: int, parts: int) -> list[dict[str, Any]]:
    """Units for an evaluation: ``parts`` slices of a labelled IDX test set of ``n`` images."""
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [
        {"kind": "idx", "unit": i, "images": images, "labels": labels, "start": int(a), "stop": int(b)}
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
        if b > a
    ]


def dataset(units: list[dict[str, Any]], local: bool, tasks: int | None = None) -> Any:
    """A Ray Dataset of rows (row, source, image, error, label) read from ``units`` by Ray Data tasks.

    ``local``: the units name files on the driver's disk; on a multi-node cluster their tasks then run on the
    driver's node, the only one that has them. ``tasks``: at most this many at once, the scoring tasks' own
    limit, so Ray Data fuses reading and scoring into one task per unit. Two operators would split the CPUs
    between them (Ray Data reserves resources per operator), and on a small machine reading would run one task
    at a time.
    """
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    items = [{"unit": json.dumps(u)} for u in units]
    remote: dict[str, Any] = {}
    if local and connection.alive_nodes() > 1:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        remote["scheduling_strategy"] = NodeAffinitySchedulingStrategy(here, soft=False)
    if tasks:
        remote["compute"] = ray.data.TaskPoolStrategy(size=tasks)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    return ds.map_batches(read_units, batch_size=1, batch_format="numpy", num_cpus=1, **remote)  # a unit a task


def read_units(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray Data task: the rows of the units in ``batch``, each image uint8 28x28 (zeros where ``error`` says why)."""
    parts = [_read_unit(json.loads(text)) for text in batch["unit"]]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _read_unit(unit: dict[str, Any]) -> dict[str, np.ndarray]:
    """The columns (row, source, image, error, label) of every image of one unit."""
    from mnist_ray import data
    from mnist_ray.inference import decoding

    if unit["kind"] == "idx":
        start, stop = unit["start"], unit["stop"]
        images, labels = data.read_test(data.TestFiles(unit["images"], unit["labels"], 0), slice(start, stop))
        n = len(labels)
        return _columns(np.arange(start, stop), [unit["images"]] * n, images, [None] * n, labels)
    if unit["kind"] == "row_group":
        items = decoding.read_row_group(unit["path"], unit["group"], unit["first"], unit["column"], unit["invert"])
    else:
        items = [i for path in unit["paths"] for i in decoding.read_file(path, unit["invert"], unit["column"])]
    blank = np.zeros((28, 28), np.uint8)
    images = np.stack([blank if i.image is None else i.image for i in items])
    rows = unit["unit"] * STRIDE + np.arange(len(items))
    return _columns(rows, [i.source for i in items], images, [i.error for i in items], np.full(len(items), -1))


def _columns(rows: np.ndarray, sources: list, images: np.ndarray, errors: list, labels: np.ndarray) -> dict:
    """One unit's rows as the pipeline's numpy columns."""
    return {
        "row": np.asarray(rows, np.int64),
        "source": np.array(sources, dtype=object),
        "image": np.asarray(images, np.uint8),
        "error": np.array(errors, dtype=object),
        "label": np.asarray(labels, np.int64),
    }


class PartNames(FilenameProvider):
    """Part files named by write task, ``part-000000-<write id>.parquet`` ..., so listing them gives the input's
    order (Ray's writer requires the write's id in the name)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:06}-{write_uuid}.parquet"


def staging_for(target: str) -> str:
    """A fresh hidden folder beside ``target`` for a write to land in before it is published."""
    name = target.rstrip("/").rsplit("/", 1)[-1]
    return storage.join(storage.parent(target), f".{name}.staging-{uuid.uuid4().hex[:8]}")


def write(ds: Any, folder: str) -> None:
    """Score ``ds`` into the object store, then write it into ``folder`` (path or URI) with Ray Data's Parquet
    writer, one ``part-*.parquet`` per block.

    Scored rows hold no images, so the object store holds little. Writing as a third operator that streams beside
    the fused read-and-score tasks slows them down, whatever its CPU request and Ray Data's reservations, while
    writing after scoring costs little.
    """
    fs, fs_path = storage.filesystem(folder)
    if not storage.is_uri(folder):
        os.makedirs(fs_path, exist_ok=True)
    ds.materialize().write_parquet(fs_path, filesystem=fs, filename_provider=PartNames())
