"""MNIST-format datasets: locate, verify and parse the four IDX files.

Training workers never touch files: the driver parses once, puts the uint8 arrays in Ray's object
store, and each worker slices its own shard (see :mod:`mnist_ray.training.worker`). Evaluation verifies the test
files on the driver and lets Ray Data tasks read them (:mod:`mnist_ray.inference.pipeline`).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_ray.errors import DataError

log = logging.getLogger(__name__)

TRAIN_IMAGES = 60_000
"""Images in the training split of both datasets (validation is held out of these)."""

PACKAGE_DATA = Path(__file__).resolve().parent / "datasets"
"""MNIST ships inside the package (package data), so a wheel or non-editable install finds it too."""
CACHE = Path.home() / ".cache" / "mnist_ray"

SPLITS = {
    "train_images": ("train-images-idx3-ubyte", 2051, [28, 28]),
    "train_labels": ("train-labels-idx1-ubyte", 2049, []),
    "test_images": ("t10k-images-idx3-ubyte", 2051, [28, 28]),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, []),
}


@dataclass(frozen=True)
class Normalization:
    """Pixel mean and std after scaling to [0, 1]: a model sees ``(pixel / 255 - mean) / std``."""

    mean: float
    std: float

    @property
    def background(self) -> float:
        """A black pixel (0) after normalisation: what augmentation fills uncovered borders with."""
        return -self.mean / self.std


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's facts: where it lives and comes from, its checksums, pixel statistics and class names."""

    default_dir: Path
    mirrors: tuple[str, ...]
    sha256: dict[str, str]
    """SHA-256 of each decompressed IDX file, by file stem."""
    normalization: Normalization
    """Mean and std of the training images' pixels, each dataset its own."""
    classes: tuple[str, ...]
    """Class names by label, as the dataset's authors name them."""
    noun: str = "class"
    """What one class is called in reports ("digit" for MNIST, whose names are the digits)."""
    plural: str = "classes"
    """The noun's plural, for headings."""


DATASET_INFO = {
    "mnist": DatasetInfo(
        PACKAGE_DATA / "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        Normalization(0.1307, 0.3081),  # the usual figures; the command under fashion-mnist gives 0.13066, 0.30811
        tuple(str(d) for d in range(10)),
        "digit",
        "digits",
    ),
    "fashion-mnist": DatasetInfo(
        Path("/usr/share/datasets/fashion-mnist"),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        # Computed from the 60k training images (0.28604, 0.35302) with:
        # python -c "from mnist_ray import data; x = data.load('fashion-mnist').train_x / 255; print(x.mean(), x.std())"
        Normalization(0.2860, 0.3530),
        # The names in Zalando's fashion-mnist README, by label.
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


@dataclass(frozen=True)
class Arrays:
    """One dataset in memory: uint8 images (N, 28, 28) and int64 labels (N,) per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def find_files(dataset: str, data_dir: str | Path | None = None) -> dict[str, Path]:
    """Path of each of the four files (raw or .gz), downloading into the cache if absent."""
    info = DATASET_INFO[dataset]
    folder = Path(data_dir).expanduser() if data_dir else info.default_dir
    found = _locate(folder)
    if len(found) == len(SPLITS):
        return found
    if data_dir:  # an explicit folder is the user's statement of where the files are
        missing = sorted(SPLITS[k][0] for k in SPLITS if k not in found)
        raise DataError(f"{folder} lacks {', '.join(missing)} (raw or .gz): put the four IDX files there")
    return download(dataset, CACHE / dataset)


def _locate(folder: Path) -> dict[str, Path]:
    """Find the files in ``folder`` or in torchvision's ``<Name>/raw`` layout beneath it."""
    candidates = [folder, folder / "MNIST" / "raw", folder / "FashionMNIST" / "raw"]
    found: dict[str, Path] = {}
    for key, (stem, _, _) in SPLITS.items():
        for base in candidates:
            for name in (stem, stem + ".gz"):
                if (base / name).is_file() and key not in found:
                    found[key] = base / name
    return found


def download(dataset: str, cache: Path, mirrors: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Fetch missing files from the dataset's mirrors into ``cache`` under a file lock (one download per host)."""
    from filelock import FileLock

    info = DATASET_INFO[dataset]
    created = not cache.exists()
    cache.mkdir(parents=True, exist_ok=True)
    lock = cache / ".download.lock"
    try:
        with FileLock(str(lock)):
            for stem, _, _ in SPLITS.values():
                if not (cache / (stem + ".gz")).is_file():
                    _fetch(stem, cache, mirrors or info.mirrors, dataset, info.default_dir)
    finally:  # a failed (e.g. offline) download leaves nothing behind: no lock, no empty cache folder
        lock.unlink(missing_ok=True)
        if created and not any(cache.iterdir()):
            cache.rmdir()
    return _locate(cache)


def _fetch(stem: str, cache: Path, mirrors: tuple[str, ...], dataset: str, default_dir: Path) -> None:
    """Download ``stem``.gz from the first mirror that works, or raise a DataError saying where to put it."""
    from torchvision.datasets.utils import download_url

    for mirror in mirrors:
        try:
            log.info("downloading %s from %s", stem, mirror)
            download_url(mirror + stem + ".gz", str(cache), filename=stem + ".gz")
            return
        except Exception as exc:  # noqa: BLE001 - any mirror failure means "try the next"
            log.warning("mirror %s failed for %s: %s", mirror, stem, exc)
            (cache / (stem + ".gz")).unlink(missing_ok=True)
    raise DataError(
        f"{dataset} files not found in {default_dir} and the download failed: "
        "put the four IDX files (raw or .gz) in a folder and pass --data-dir"
    )


def read_idx(path: Path, magic: int, shape: list[int]) -> tuple[np.ndarray, str]:
    """Parse one IDX file, checking gzip integrity, magic number and sizes; also return its SHA-256."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupted or truncated gzip ({exc}); replace the file") from None
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(f"{path}: wrong IDX magic number {found}, expected {magic}; is this the right file?")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    header = 4 + 4 * ndim
    if dims[1:] != shape:
        raise DataError(f"{path}: item shape {dims[1:]}, expected {shape}")
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path}: truncated, {len(raw) - header} bytes of data for shape {dims}; replace the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims), hashlib.sha256(raw).hexdigest()


def load(dataset: str = "mnist", data_dir: str | Path | None = None) -> Arrays:
    """Load and verify the four files of ``dataset`` (from ``data_dir`` or the default place)."""
    parsed = _verified(dataset, find_files(dataset, data_dir), ("train", "test"))
    return Arrays(
        parsed["train_images"],
        parsed["train_labels"].astype(np.int64),
        parsed["test_images"],
        parsed["test_labels"].astype(np.int64),
    )


def _verified(dataset: str, files: dict[str, Path], splits: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The images and labels of ``splits``, parsed and checked: as many labels as images, SHA-256 as published."""
    keys = [f"{split}_{kind}" for split in splits for kind in ("images", "labels")]
    parsed = {key: read_idx(files[key], *SPLITS[key][1:]) for key in keys}
    for split in splits:
        n_img, n_lab = len(parsed[f"{split}_images"][0]), len(parsed[f"{split}_labels"][0])
        if n_img != n_lab:
            raise DataError(f"{split}: {n_img} images but {n_lab} labels; the files are from different sets")
    for key in keys:
        expected = DATASET_INFO[dataset].sha256.get(SPLITS[key][0])
        if expected and parsed[key][1] != expected:
            raise DataError(f"{files[key]}: SHA-256 mismatch (corrupted, or not {dataset}); replace the file")
    return {key: array for key, (array, _) in parsed.items()}


@dataclass(frozen=True)
class TestFiles:
    """Where a dataset's test split lives (two IDX files, raw or .gz) and how many images it holds."""

    images: str
    labels: str
    n: int


def test_files(dataset: str = "mnist", data_dir: str | Path | None = None) -> TestFiles:
    """Locate and verify ``dataset``'s test files (checksums, sizes) for Ray Data tasks to read them."""
    files = find_files(dataset, data_dir)
    n = len(_verified(dataset, files, ("test",))["test_labels"])
    return TestFiles(str(files["test_images"]), str(files["test_labels"]), n)


def read_test(files: TestFiles, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test images (uint8, N x 28 x 28) and int64 labels at ``rows``."""
    images = read_idx(Path(files.images), *SPLITS["test_images"][1:])[0][rows]
    return images, read_idx(Path(files.labels), *SPLITS["test_labels"][1:])[0][rows].astype(np.int64)


def write_test(folder: str | Path, images: np.ndarray, labels: np.ndarray) -> TestFiles:
    """Write ``images`` (uint8 N x 28 x 28) and ``labels`` as a gzipped IDX test set in ``folder`` (for benches and
    tests that score other or larger test sets than a dataset's own)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in (("test_images", np.asarray(images, np.uint8)), ("test_labels", np.asarray(labels, np.uint8))):
        stem, magic, _ = SPLITS[key]
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + array.tobytes(), compresslevel=1))
    names = {key: str(folder / f"{SPLITS[key][0]}.gz") for key in ("test_images", "test_labels")}
    return TestFiles(names["test_images"], names["test_labels"], len(labels))


def split_train_val(n: int, val_size: int, seed: int, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, val) index arrays over ``n`` training images.

    The validation images are the first ``val_size`` of a seeded permutation, so they are the same
    for every ``limit``; ``limit`` caps the training indices only.
    """
    order = np.random.default_rng(seed).permutation(n)
    val, train = order[:val_size], order[val_size:]
    return (train[:limit] if limit else train), val


def normalize(images: np.ndarray, stats: Normalization | None = None):
    """uint8 (N, 28, 28) -> float32 tensor (N, 1, 28, 28) standardised with ``stats``.

    ``stats``: the dataset's (``DATASET_INFO[name].normalization``) when training, the checkpoint's
    (:func:`mnist_ray.training.checkpoints.normalization`) when scoring; None means MNIST's.
    """
    import torch

    stats = stats or DATASET_INFO["mnist"].normalization
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    return x.sub_(stats.mean).div_(stats.std).unsqueeze(1)
