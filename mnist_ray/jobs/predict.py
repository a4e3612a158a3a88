"""Predict the digits in new images with a trained checkpoint, on the evaluation's Ray Data inference.

--input is a folder of image files (PNG, JPEG, ...: any size, grayscale or colour, either polarity), one image,
a Parquet file with an image column, or an IDX images file, as a path or URI. Writes
<output>/predictions.parquet (source, predicted, confidence, top3, top3_confidence, error), complete or absent,
to a folder or an s3:// URI. An unreadable file is a row with its reason, never a failed batch; an input with
no readable image at all is bad input (exit 2).
"""

from __future__ import annotations

import functools
import resource
from dataclasses import dataclass
from typing import ClassVar

from mnist_ray.cluster import connection, layout, stop
from mnist_ray.errors import ConfigError
from mnist_ray.files import capacity, folders, lease, publishing, storage
from mnist_ray.inference import decoding, pipeline, predict, sources
from mnist_ray.inference.scoring import ScoringOptions
from mnist_ray.inference.sources import CheckpointSource
from mnist_ray.settings import cli
from mnist_ray.settings.config import RayOptions
from mnist_ray.settings.rules import Interval, validate_fields

emit = functools.partial(print, flush=True)


@dataclass(frozen=True)
class PredictOptions(CheckpointSource, ScoringOptions):
    """What to score, with which checkpoint, and where the predictions go."""

    RANGES: ClassVar[dict[str, Interval]] = {**CheckpointSource.RANGES, **ScoringOptions.RANGES}

    input: str | None = None
    """Images to score (path or URI): a folder (searched recursively), an image, a Parquet or an IDX file."""
    output: str | None = None
    """Folder or URI that receives predictions.parquet (default: ~/mnist_ray/predictions/<UTC time>)."""
    overwrite: bool = False
    """Replace an existing --output folder."""
    invert: str = "auto"
    """auto, yes or no: make dark-on-light images light-on-dark like MNIST (auto: when the border is bright)."""
    column: str = "image"
    """Parquet input: the column holding the images (encoded bytes, {'bytes': ...} structs, or 28x28/784 pixels)."""
    dataset: str | None = None
    """Refuse a checkpoint trained on another dataset."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.invert not in decoding.INVERT:
            raise ConfigError(f"--invert must be one of {', '.join(decoding.INVERT)}, got {self.invert!r}")
        validate_fields(self)


def main(argv: list[str] | None = None) -> int:
    """Parse flags; check the output, checkpoint and images before Ray; score on Ray Data; publish the table."""
    p = cli.parser(__doc__)
    cli.add_fields(p.add_argument_group("prediction"), PredictOptions, PredictOptions())
    cli.add_fields(p.add_argument_group("ray"), RayOptions, RayOptions())
    args = p.parse_args(argv)
    opts, ray_opts = cli.build(PredictOptions, args), cli.build(RayOptions, args)
    if not opts.input:
        raise ConfigError("pass --input: a folder of images, an image, a Parquet or an IDX file (path or URI)")
    connection.check_address()  # a dead RAY_ADDRESS or stale address file: stop before reading anything
    output = opts.output or storage.join(folders.DEFAULT_PREDICTIONS, folders.new_id())
    target = publishing.check_new_folder(output, opts.overwrite)
    members = opts.resolve()  # one checkpoint, or an ensemble's
    states = sources.load(members, opts.dataset)  # missing, unsafe, mismatched: bad input, before Ray
    files = decoding.discover(opts.input)  # names only: a missing or empty input is bad input, before Ray
    capacity.check_writable(storage.parent(target), "--output")  # the first write, after every check that needs no Ray
    with lease.holding([target], [f"prediction output {target}"]), stop.next_step(_NOTHING_PUBLISHED):
        return _predict(opts, ray_opts, target, members, states, files)


_NOTHING_PUBLISHED = f"nothing was published ({folders.PREDICTIONS} is written whole or not at all); rerun the command"


def _predict(opts: PredictOptions, ray_opts: RayOptions, target: str, members: list[str], states, files) -> int:
    """Once the output's lease is held: Ray, then reading, scoring and writing on Ray Data, then publishing."""
    connection.connect(ray_opts.num_cpus, verbose=ray_opts.verbose, dashboard=ray_opts.dashboard)
    if not storage.is_uri(target):
        connection.check_single_node("--output", target)
    use_gpu, actors, chosen = layout.inference(opts.use_gpu, opts.actors)
    if chosen:
        emit(chosen)
    emit(f"predicting {len(files)} file(s) from {storage.normalize(opts.input)} with {' + '.join(members)}")
    staging = pipeline.staging_for(target)
    try:
        counts = predict.predict(
            files,
            members,
            states,
            staging,
            opts.invert,
            opts.column,
            use_gpu=use_gpu,
            actors=actors,
            batch_size=opts.batch_size,
            progress=ray_opts.verbose,
        )
        written = predict.publish(staging, target, counts, opts.input, opts.overwrite)
    finally:
        publishing.remove_dir(staging)  # published (renamed or copied) or abandoned: nothing stays behind
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(f"{counts.scored} scored, {counts.unreadable} unreadable: {written} (driver peak RSS {peak:.0f} MB)")
    return 0
