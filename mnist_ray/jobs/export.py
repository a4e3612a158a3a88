"""Export a trained checkpoint for serving: a torch.export program (model.pt2) and ONNX (model.onnx).

Neither needs mnist_ray to run: torch.export.load("model.pt2").module() or an onnxruntime session takes float32
images (N, 1, 28, 28) with raw pixel values 0..255 and returns logits (N, 10). Writes <output>/ (model.pt2,
model.onnx, export.json, MANIFEST.json), complete or absent, to a folder or an s3:// URI; every file is loaded
back and checked against the checkpoint before it is published. Needs no Ray. ONNX needs the [onnx] extra.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_ray.cluster import stop
from mnist_ray.files import capacity, folders, lease, publishing, storage
from mnist_ray.inference import export, sources
from mnist_ray.inference.sources import CheckpointSource
from mnist_ray.settings import cli
from mnist_ray.settings.rules import validate_fields

emit = functools.partial(print, flush=True)


@dataclass(frozen=True)
class ExportOptions(CheckpointSource):
    """Which checkpoint to export, in which formats, and where the files go."""

    output: str | None = None
    """Folder or URI that receives the exports (default: ~/mnist_ray/exports/<UTC time>)."""
    overwrite: bool = False
    """Replace an existing --output folder."""
    format: str = "all"
    """pt2 (torch.export program), onnx (needs the [onnx] extra) or all."""

    def __post_init__(self) -> None:
        super().__post_init__()
        export.parse_formats(self.format)
        validate_fields(self)


def main(argv: list[str] | None = None) -> int:
    """Parse flags; check formats, output and checkpoint before any work; export, check and publish the files."""
    p = cli.parser(__doc__)
    cli.add_fields(p.add_argument_group("export"), ExportOptions, ExportOptions())
    opts = cli.build(ExportOptions, p.parse_args(argv))
    formats = export.parse_formats(opts.format)
    if "onnx" in formats:
        export.check_onnx_available()
    output = opts.output or storage.join(folders.DEFAULT_EXPORTS, folders.new_id())
    target = publishing.check_new_folder(output, opts.overwrite)
    members = opts.resolve()  # one checkpoint, or an ensemble's
    states = sources.load(members)  # missing, unsafe, mismatched: bad input, before any write
    capacity.check_writable(storage.parent(target), "--output")  # the first write, after every other check
    with lease.holding([target], [f"export output {target}"]), stop.next_step(_NOTHING_PUBLISHED):
        return _export(opts, formats, target, members, states)


_NOTHING_PUBLISHED = "nothing was published (an export folder is published whole or not at all); rerun the command"


def _export(opts: ExportOptions, formats: tuple[str, ...], target: str, members: list[str], states) -> int:
    """Once the output's lease is held: export, check each file against the checkpoint(s), publish the folder."""
    for checkpoint, state in zip(members, states, strict=True):
        emit(f"exporting {checkpoint} ({state['model']}, {state['dataset']}, epoch {state['epoch']})")
    if len(members) > 1:
        emit(f"as one ensemble of {len(members)} models: the mean of their probabilities")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist_ray-export-") as tmp:
        meta = export.export(states, members, formats, Path(tmp))
        publishing.publish_dir(Path(tmp), target, opts.overwrite)
    for fmt, name in meta["files"].items():
        diff = meta["checked"]["max_abs_log_probability_difference"][fmt]
        emit(f"{fmt}: {storage.join(target, name)} (scores as the checkpoint does, to within {diff:.1g})")
    emit(f"metadata: {storage.join(target, export.METADATA)}; exported in {time.perf_counter() - start:.1f}s")
    return 0
