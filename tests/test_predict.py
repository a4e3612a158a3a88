"""Batch prediction on new images: PNGs made from MNIST test images get the evaluation's predictions back."""

from __future__ import annotations

import gzip
import io
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mnist_ray import data
from mnist_ray.files import publishing, storage
from mnist_ray.inference import decoding, evaluation
from mnist_ray.jobs import predict
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models
from tests.conftest import MNIST
from tests.helpers import assert_one_line_error, call
from tests.s3 import make_bucket

N = 200  # MNIST test images written as PNGs; copies of the first 60 in other forms


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    images, _ = data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz", 2051, [28, 28])
    return images[:N]


@pytest.fixture(scope="module")
def reference(tiny_run, test_images, tmp_path_factory) -> pd.DataFrame:
    """The evaluation path's predictions for the same images: what every copy must get back."""
    test = data.write_test(tmp_path_factory.mktemp("reference"), test_images, np.zeros(N, np.int64))
    prep = evaluation.prepare(tiny_run[2].best_checkpoint, test=test)
    return evaluation.score_test_set(prep, actors=1).predictions


def png(array: np.ndarray, mode: str = "L", size: int = 28) -> bytes:
    img = Image.fromarray(array).convert(mode)
    if size != 28:
        img = img.resize((size, size), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def write_folder(folder: Path, images: np.ndarray) -> None:
    """N plain PNGs; RGB, black-on-white and 56x56 copies; one corrupt PNG and one text file."""
    for i, x in enumerate(images):
        (folder / "plain").mkdir(parents=True, exist_ok=True)
        (folder / "plain" / f"{i:03d}.png").write_bytes(png(x))
    for kind, indices, make in [
        ("rgb", range(0, 20), lambda x: png(x, "RGB")),
        ("inverted", range(20, 40), lambda x: png(255 - x)),
        ("large", range(40, 60), lambda x: png(x, size=56)),
    ]:
        (folder / kind).mkdir()
        for i in indices:
            (folder / kind / f"{i:03d}.png").write_bytes(make(images[i]))
    (folder / "bad").mkdir()
    (folder / "bad" / "corrupt.png").write_bytes(png(images[0])[:120])
    (folder / "bad" / "notes.txt").write_text("not an image\n")
    (folder / "bad" / "gone.png").symlink_to(folder / "bad" / "moved-away.png")  # a dangling symlink: a row too
    (folder / ".hidden.png").write_bytes(png(images[0]))  # hidden names are never inputs


def test_pngs_get_the_evaluation_predictions_and_bad_files_are_listed(
    tiny_run, reference, test_images, tmp_path, capsys
):
    folder, out = tmp_path / "digits", tmp_path / "out"
    write_folder(folder, test_images)
    args = ["--input", str(folder), "--checkpoint", tiny_run[2].best_checkpoint, "--batch-size", "16"]
    result = call(predict.main, capsys, *args, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"260 scored, 3 unreadable: {out / 'predictions.parquet'}" in result.stdout
    assert "auto: 2 scoring replicas of 1 CPU" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "predictions.parquet"]
    parts = sorted(p.name for p in (out / "predictions.parquet").iterdir())
    assert len(parts) > 1 and [p[:11] for p in parts] == [f"part-{i:06}" for i in range(len(parts))]  # in order
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]
    table = pd.read_parquet(out / "predictions.parquet")
    table["kind"] = [Path(s).parent.name for s in table["source"]]
    table["index"] = [
        int(Path(s).stem) if k != "bad" else -1 for s, k in zip(table["source"], table["kind"], strict=True)
    ]
    assert table["source"].tolist() == sorted(table["source"]) and len(table) == 263
    ref = reference.set_index("index")
    plain = table[table["kind"] == "plain"]
    assert plain["index"].tolist() == list(range(N))
    assert (plain["predicted"].to_numpy() == ref["predicted"].to_numpy()).all()
    np.testing.assert_allclose(plain["confidence"], ref["confidence"], rtol=1e-5)
    for kind in ("rgb", "inverted"):
        rows = table[table["kind"] == kind]
        assert (rows["predicted"].to_numpy() == ref.loc[rows["index"], "predicted"].to_numpy()).all(), kind
    large = table[table["kind"] == "large"]
    agree = (large["predicted"].to_numpy() == ref.loc[large["index"], "predicted"].to_numpy()).mean()
    assert agree >= 0.9, f"56x56 copies, reframed: {agree:.0%} agree"
    scored = table[table["kind"] != "bad"]
    assert all(t[0] == p and c[0] == pytest.approx(q) for t, c, p, q in zip(*_cols(scored), strict=True))
    assert scored["error"].isna().all() and all(list(c) == sorted(c, reverse=True) for c in scored["top3_confidence"])
    bad = table[table["kind"] == "bad"].set_index("source")
    assert bad["predicted"].isna().all() and bad["top3"].isna().all()
    assert "corrupt or truncated image" in bad.loc[str(folder / "bad" / "corrupt.png"), "error"]
    assert "not an image" in bad.loc[str(folder / "bad" / "notes.txt"), "error"]
    assert "a dangling symlink" in bad.loc[str(folder / "bad" / "gone.png"), "error"]


def _cols(frame: pd.DataFrame) -> tuple:
    return frame["top3"], frame["top3_confidence"], frame["predicted"], frame["confidence"]


def idx_bytes(images: np.ndarray) -> bytes:
    header = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
    return gzip.compress(header + images.tobytes())


def test_idx_and_parquet_inputs_with_the_output_on_s3(tiny_run, reference, test_images, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "few-idx3-ubyte.gz").write_bytes(idx_bytes(test_images[:30]))
    cells = [png(x) for x in test_images[30:40]] + [None, b"junk"]
    pq.write_table(pa.table({"image": pa.array(cells, pa.binary())}), folder / "a.parquet")
    pq.write_table(pa.table({"image": [test_images[40].ravel().tolist()]}), folder / "b.parquet")  # 784 pixels
    pq.write_table(pa.table({"pixels": [1]}), folder / "c.parquet")
    out = f"{make_bucket('mnist-ray-tests')}/{uuid.uuid4().hex[:8]}/predictions"
    args = ["--input", str(folder), "--checkpoint", tiny_run[2].best_checkpoint, "--actors", "1", "--output", out]
    result = call(predict.main, capsys, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "41 scored, 3 unreadable" in result.stdout and publishing.is_complete(out)
    fs, path = storage.filesystem(f"{out}/predictions.parquet")
    table = pq.read_table(path, filesystem=fs).to_pandas().set_index("source")
    rows = [f"{folder}/a.parquet#{i}" for i in range(12)] + [f"{folder}/b.parquet#0", f"{folder}/c.parquet"]
    idx = [f"{folder}/few-idx3-ubyte.gz#{i}" for i in range(30)]
    assert table.index.tolist() == rows + idx
    want = reference["predicted"].to_numpy()
    assert (table.loc[idx, "predicted"] == want[:30]).all() and (table.loc[rows[:10], "predicted"] == want[30:40]).all()
    assert table.loc[rows[12], "predicted"] == want[40]
    assert table.loc[rows[10], "error"] == "empty (null) image" and "not an image" in table.loc[rows[11], "error"]
    assert "no column 'image' (columns: pixels): pass --column" in table.loc[rows[13], "error"]
    again = call(predict.main, capsys, *args)  # an existing output: refused before any work
    assert_one_line_error(again, "already exists: pass --overwrite")


def test_conversion_rules():
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    assert (decoding.to_mnist(255 - digit) == digit).all()  # black on white: inverted (bright border)
    assert (decoding.to_mnist(255 - digit, invert="no") == 255 - digit).all()
    assert (decoding.to_mnist(digit, invert="yes") == 255 - digit).all()
    page = np.full((300, 200), 230, np.uint8)  # a dark stroke on light gray paper, off centre
    page[40:140, 20:45] = 20
    framed = decoding.to_mnist(page)
    rows, cols = np.nonzero(framed > 25)
    assert rows.max() - rows.min() + 1 <= 20 and rows.max() - rows.min() + 1 >= 18
    mass = framed.astype(float)
    assert abs((mass.sum(1) * np.arange(28)).sum() / mass.sum() - 14) <= 1
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # black ink on a transparent background
    rgba.paste((0, 0, 0, 255), (20, 10, 40, 54))
    assert decoding.to_mnist(decoding.grayscale(rgba)).max() == 255
    sixteen = Image.fromarray(digit.astype(np.uint16) * 257)
    assert (decoding.to_mnist(decoding.grayscale(sixteen)) == digit).all()
    with pytest.raises(decoding.ImageError, match="blank image"):
        decoding.to_mnist(np.full((40, 40), 200, np.uint8))
    assert (decoding.from_value((digit / 255.0).ravel().tolist()) == digit).all()  # 784 floats in [0, 1]
    with pytest.raises(decoding.ImageError, match="expected 28x28 or 784"):
        decoding.from_value([1, 2, 3])


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """A real (untrained) cnn checkpoint, for the checks that run before Ray."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = models.build("cnn", seed=0)
    return checkpoints.save(folder, model=model, optimizer=None, config=TrainConfig().to_dict(), epoch=1, history=[])


def test_bad_input_is_one_line_before_ray(untrained, test_images, tmp_path, capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    (images / "one.png").write_bytes(png(test_images[0]))
    ok = ["--checkpoint", str(untrained), "--output", str(out)]
    cases = [
        ([*ok], "pass --input"),
        (["--input", str(tmp_path / "none"), *ok], "does not exist"),
        (["--input", str(images), "--invert", "maybe", *ok], "--invert must be one of auto, yes, no"),
        (["--input", str(images), "--checkpoint", str(tmp_path / "none.pt"), "--output", str(out)], "does not exist"),
        (["--input", str(images), "--checkpoint", str(images / "one.png"), "--output", str(out)], "corrupt"),
        (["--input", str(images), "--checkpoint", str(untrained), "--output", str(images / "one.png" / "x")], "cannot"),
    ]
    for argv, message in cases:
        assert_one_line_error(call(predict.main, capsys, *argv), message)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(call(predict.main, capsys, "--input", str(tmp_path / "empty"), *ok), "holds no files")
    (images / "one.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (images / "notes.txt").write_text("hello")
    result = call(predict.main, capsys, "--input", str(images), *ok)
    assert_one_line_error(result, "no readable image in 2 item(s) (first: ")
    assert not out.exists()
    (out / "old").mkdir(parents=True)
    assert_one_line_error(call(predict.main, capsys, "--input", str(images), *ok), "already exists: pass --overwrite")
