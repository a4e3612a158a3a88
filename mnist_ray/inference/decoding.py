"""New images as the model expects them: found, read, decoded and framed like MNIST, one item per image.

Inputs (a path or URI, sniffed by content, not by name): a folder (searched recursively, hidden names skipped)
or one file, each file being an image Pillow reads (PNG, JPEG, ...), an IDX images file (raw or ``.gz``) or a
Parquet file with an image column. An unreadable file or row becomes one item with its reason, never an
exception, so one bad file never stops a batch.

Conversion to what the model was trained on (white digit on black, 28x28, MNIST's framing):

1. grayscale: RGB by luminance, transparency composited on white, 16-bit scaled to 8 bits;
2. ``invert``: ``auto`` inverts when the image's outer ring of pixels averages brighter than mid-gray (a dark
   digit on light paper), ``yes`` / ``no`` force it;
3. a 28x28 image is taken as already framed (MNIST's own files, IDX, exports), so it is used as is; any
   other size is framed as MNIST was built: background (the border's median) subtracted, the digit's
   bounding box fitted into 20x20 keeping its aspect ratio, then placed in 28x28 with its centre of mass at
   the centre. A plain resize of the whole picture would leave a small digit on a large page tiny, unlike
   anything the model saw in training.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.fs as pafs

from mnist_ray import data
from mnist_ray.errors import DataError
from mnist_ray.files import storage

INVERT = ("auto", "yes", "no")
"""Values of ``--invert``."""
SIZE, BOX = 28, 20
"""MNIST's image side, and the box its digits are fitted into before centring."""
IDX_IMAGES, IDX_LABELS = 2051, 2049


class ImageError(Exception):
    """One image cannot be used; the message is the reason written to its row."""


@dataclass(frozen=True)
class Item:
    """One image to score (uint8 28x28, ready for the model) or the reason it cannot be."""

    source: str
    image: np.ndarray | None = None
    error: str | None = None


def discover(path: str) -> list[str]:
    """Every file to read: ``path`` itself, or the non-hidden files under the folder ``path``, sorted."""
    try:
        path = storage.normalize(path)
        if storage.is_file(path):
            return [path]
        found = storage.exists(path)
    except storage.StorageError as exc:
        raise DataError(f"--input {exc}") from None
    if not found:
        raise DataError(f"--input {path} does not exist: pass a folder of images, an image, a Parquet or IDX file")
    fs, root = storage.filesystem(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"--input {path}: cannot list it ({' '.join(str(exc).split())[:200]})") from None
    relative = [i.path[len(root) :].strip("/") for i in infos if i.type == pafs.FileType.File]
    if not storage.is_uri(path):  # pyarrow's listing leaves dangling symlinks out: each is a row with its reason
        relative += [os.path.relpath(link, root) for link in _dangling_links(root)]
    files = sorted(r for r in relative if not any(part.startswith(".") for part in r.split("/")))
    if not files:
        raise DataError(f"--input {path} holds no files: pass a folder of images, an image, a Parquet or IDX file")
    return [storage.join(path, r) for r in files]


def _dangling_links(root: str) -> list[str]:
    """Symlinks under the local folder ``root`` whose target does not exist."""
    found = []
    for folder, _, names in os.walk(root):
        found += [p for p in (os.path.join(folder, n) for n in names) if os.path.islink(p) and not os.path.exists(p)]
    return found


def read_file(source: str, invert: str, column: str) -> list[Item]:
    """The items of one file: one image, every image of an IDX file, or every row of a Parquet file."""
    if not storage.is_uri(source) and os.path.islink(source) and not os.path.exists(source):
        return [Item(source, error=f"a dangling symlink: its target {os.readlink(source)} does not exist")]
    try:
        with storage.local_copy(source) as local:
            head = _head(local)
            if int.from_bytes(head[:4], "big") == IDX_IMAGES:
                images = data.read_idx(local, IDX_IMAGES, [SIZE, SIZE])[0]
                return [_item(f"{source}#{i}", lambda x=x: x, invert) for i, x in enumerate(images)]
            if int.from_bytes(head[:4], "big") == IDX_LABELS:
                return [Item(source, error="an IDX labels file, not images")]
            if head.startswith(b"PAR1"):
                return _parquet_items(local, source, invert, column)
            raw = local.read_bytes()
    except (storage.StorageError, DataError, OSError) as exc:
        return [Item(source, error=" ".join(str(exc).split()))]
    return [_item(source, lambda: decode(raw), invert)]


def _head(local: Path) -> bytes:
    """The first bytes of a file, of its decompressed content when it is gzip (an ``.idx3-ubyte.gz``)."""
    with open(local, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(local) as f:
                return f.read(4)
        except (OSError, EOFError):
            return head
    return head


def _parquet_items(local: Path, source: str, invert: str, column: str) -> list[Item]:
    """One item per row of the Parquet file's ``column``, named ``<file>#<row>``."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(local)
    except (OSError, pa.ArrowException) as exc:
        return [Item(source, error=f"not a readable Parquet file ({' '.join(str(exc).split())[:200]})")]
    if column not in table.column_names:
        names = ", ".join(table.column_names)
        return [Item(source, error=f"no column {column!r} (columns: {names}): pass --column")]
    return _cells(source, table.column(column), 0, invert)


def read_row_group(source: str, group: int, first: int, column: str, invert: str) -> list[Item]:
    """The items of one row group of a Parquet file (path or URI), rows numbered from ``first`` in the file."""
    import pyarrow.parquet as pq

    try:
        fs, fs_path = storage.filesystem(source)
        with fs.open_input_file(fs_path) as f:
            values = pq.ParquetFile(f).read_row_group(group, columns=[column]).column(0)
    except (OSError, pa.ArrowException, storage.StorageError) as exc:
        reason = f"row group {group} is not readable ({' '.join(str(exc).split())[:200]})"
        return [Item(f"{source}#rowgroup{group}", error=reason)]
    return _cells(source, values, first, invert)


def _cells(source: str, column: pa.ChunkedArray, first: int, invert: str) -> list[Item]:
    """Items of Parquet cells, named ``<file>#<row>`` with rows counted from ``first``."""
    values = _pixel_rows(column)
    if values is None:
        values = column.to_pylist()
    return [_item(f"{source}#{first + i}", lambda v=v: from_value(v), invert) for i, v in enumerate(values)]


def _pixel_rows(column: pa.ChunkedArray) -> np.ndarray | None:
    """A column of 784 pixel numbers per row as one (N, 784) array, without a Python object per pixel (which would
    dominate the time to read a large row group); None for any other column (encoded bytes, nulls, other
    lengths), which is read cell by cell."""
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        return None
    if not (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)) or column.null_count:
        return None
    flat = pa.concat_arrays(column.chunks) if column.num_chunks != 1 else column.chunk(0)
    lengths = pa.compute.list_value_length(flat).to_numpy(zero_copy_only=False)
    if len(lengths) == 0 or (lengths != SIZE * SIZE).any():
        return None
    return flat.flatten().to_numpy(zero_copy_only=False).reshape(len(flat), SIZE * SIZE)


def _item(source: str, read: Callable[[], np.ndarray], invert: str) -> Item:
    """Run ``read`` and convert its grayscale image; any failure becomes the item's reason, never an exception."""
    try:
        return Item(source, image=to_mnist(read(), invert))
    except ImageError as exc:
        return Item(source, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a crafted file can make a decoder raise anything; one item fails
        return Item(source, error=f"cannot read the image ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")


def decode(raw: bytes) -> np.ndarray:
    """An encoded image file (PNG, JPEG, any format Pillow reads) as a uint8 grayscale array."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return grayscale(ImageOps.exif_transpose(img))  # a phone photo's orientation tag
    except UnidentifiedImageError:
        raise ImageError("not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt or truncated image ({' '.join(str(exc).split())[:200]})") from None


def grayscale(img: Any) -> np.ndarray:
    """A Pillow image as uint8 gray: luminance of colour, transparency on white, 16-bit and float scaled to 0-255."""
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        return np.clip(values / top * 255, 0, 255).round().astype(np.uint8)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    return np.asarray(img.convert("L"))


def from_value(value: Any) -> np.ndarray:
    """A Parquet cell: encoded image bytes, a ``{"bytes": ...}`` struct (Hugging Face), or 28x28 / 784 pixels."""
    if isinstance(value, dict) and "bytes" in value:
        value = value["bytes"]
    if value is None:
        raise ImageError("empty (null) image")
    if isinstance(value, bytes | bytearray):
        return decode(bytes(value))
    given = np.asarray(value)
    if given.dtype.kind not in "uif":
        raise ImageError(f"a {type(value).__name__} value: expected image bytes or pixel numbers")
    pixels = given.astype(np.float64).reshape(SIZE, SIZE) if given.shape == (SIZE * SIZE,) else given
    if pixels.ndim != 2 or not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ImageError(f"pixel values of shape {given.shape}: expected 28x28 or 784 numbers in 0-255")
    scale = 255.0 if given.dtype.kind == "f" and pixels.max() <= 1 else 1.0  # floats in [0, 1]
    return np.clip(pixels * scale, 0, 255).round().astype(np.uint8)


def to_mnist(gray: np.ndarray, invert: str = "auto") -> np.ndarray:
    """A uint8 grayscale image as the model expects it: white digit on black, 28x28, framed like MNIST."""
    if gray.ndim != 2 or gray.size == 0:
        raise ImageError(f"image of shape {gray.shape}: expected a 2-D grayscale image")
    if invert == "yes" or (invert == "auto" and _border(gray).mean() > 127.5):
        gray = 255 - gray
    if gray.shape == (SIZE, SIZE):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    return reframe(gray)


def _border(gray: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels."""
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def reframe(gray: np.ndarray) -> np.ndarray:
    """MNIST's framing: background removed, bounding box fitted into 20x20, centre of mass at the 28x28 centre."""
    from PIL import Image

    ink = np.clip(gray.astype(np.float32) - np.median(_border(gray)), 0, None)
    if ink.max() < 16:  # under 16 gray levels above the background: only noise
        raise ImageError("blank image: no digit found (nothing stands out from the background)")
    ink *= 255.0 / ink.max()
    rows, cols = np.nonzero(ink > 0.1 * 255)  # faint specks and compression noise do not stretch the box
    crop = np.ascontiguousarray(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], dtype=np.float32)
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    digit = np.clip(np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS)), 0, 255)
    return _centre(digit)


def _centre(digit: np.ndarray) -> np.ndarray:
    """Place ``digit`` (at most 20x20) in 28x28 with its centre of mass at (14, 14), where MNIST's lie."""
    h, w = digit.shape
    weight = max(float(digit.sum()), 1e-6)
    com_row = (digit.sum(1) * np.arange(h)).sum() / weight
    com_col = (digit.sum(0) * np.arange(w)).sum() / weight
    top = int(np.clip(round(SIZE / 2 - com_row), 0, SIZE - h))
    left = int(np.clip(round(SIZE / 2 - com_col), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top : top + h, left : left + w] = digit
    return out.round().astype(np.uint8)
