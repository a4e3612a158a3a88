"""Serving exports: model.pt2 and model.onnx, loaded where mnist_ray cannot be imported, predict as the checkpoint.

No Ray: the checkpoint is a CNN trained for a moment in this process, saved in the project's format.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_ray import data
from mnist_ray.files import publishing, storage
from mnist_ray.inference import export as lib
from mnist_ray.inference import scoring
from mnist_ray.jobs import export
from mnist_ray.settings import cli
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models
from tests.conftest import REPO
from tests.helpers import assert_one_line_error, call
from tests.s3 import make_bucket

EXPORT_FILES = {"model.pt2", "model.onnx", "export.json", "MANIFEST.json"}


def train_briefly(model: torch.nn.Module, arrays: data.Arrays, steps: int = 40) -> None:
    """A few Adam steps on 2,560 training images: real weights and batch-norm statistics, in about a second."""
    x, y = data.normalize(arrays.train_x[:2560]), torch.from_numpy(arrays.train_y[:2560])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        i = slice(step % 40 * 64, step % 40 * 64 + 64)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def arrays() -> data.Arrays:
    return data.load("mnist")


def make_checkpoint(folder: Path, arrays: data.Arrays, model_name: str) -> str:
    """A briefly trained checkpoint in the project's format (``checkpoints.save``), as a run would leave it."""
    model = models.build(model_name, seed=0)
    train_briefly(model, arrays)
    cfg = TrainConfig(model=model_name).to_dict()
    history = [{"epoch": 1, "val_acc": 0.5}]
    return str(checkpoints.save(folder, model=model, optimizer=None, config=cfg, epoch=1, history=history))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, arrays) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"), arrays, "cnn")


@pytest.fixture(scope="module")
def reference(checkpoint, arrays) -> np.ndarray:
    """The checkpoint's log-probabilities on the 10k test images, from the evaluation job's own scorer."""
    return scoring.Predictor({"paths": [checkpoint]}, threads=torch.get_num_threads()).log_probs(arrays.test_x).numpy()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    """The job's export of ``checkpoint`` in every format (read-only for the tests that share it)."""
    out = tmp_path_factory.mktemp("exported") / "export"
    assert cli.run(export.main, ["--checkpoint", checkpoint, "--output", str(out)]) == 0
    return out


def readme_snippets() -> list[str]:
    """The README's Python snippets for serving (section "Export"): the code a serving team copies."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Export: a model that runs without mnist_ray") :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


# Runs with -I -S: no PYTHONPATH, no working directory, no site hooks; site-packages is put back on sys.path by
# hand, so torch and onnxruntime import but .pth files (mnist_ray's editable install is one) are not run.
SERVE = """
import sys
sys.path.append(sys.argv[1])
try:
    import mnist_ray
    raise SystemExit("mnist_ray is importable here: " + mnist_ray.__file__)
except ModuleNotFoundError:
    pass
import numpy as np
import torch
pixels = np.load(sys.argv[2])
out = {}
images = torch.from_numpy(pixels)
with torch.inference_mode():
    exec(compile(sys.argv[3], "README pt2 snippet", "exec"))
out["pt2"] = logits.numpy()
images = pixels
exec(compile(sys.argv[4], "README onnx snippet", "exec"))
out["onnx"] = logits
assert not [m for m in sys.modules if m.startswith("mnist_ray")], "loading an export imported mnist_ray"
np.savez(sys.argv[5], **out)
print("served", {k: v.shape for k, v in out.items()})
"""


def serve(folder: Path, pixels: np.ndarray, tmp: Path) -> dict[str, np.ndarray]:
    """Run the README snippets on ``pixels`` in a fresh Python that cannot import mnist_ray, in ``folder``."""
    np.save(tmp / "pixels.npy", pixels)
    pt2, onnx = readme_snippets()
    site = sysconfig.get_paths()["purelib"]
    argv = [sys.executable, "-I", "-S", "-c", SERVE, site, str(tmp / "pixels.npy"), pt2, onnx, str(tmp / "out.npz")]
    done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp / "out.npz") as out:
        return dict(out)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    return torch.log_softmax(torch.from_numpy(logits), 1).numpy()


def test_exports_run_without_mnist_ray_and_predict_as_the_checkpoint(exported, reference, arrays, tmp_path):
    out = exported
    assert {p.name for p in out.iterdir()} == EXPORT_FILES  # one self-contained .onnx: no .onnx.data beside it
    assert publishing.is_complete(str(out))
    serving = tmp_path / "serving"  # the serving side gets the two files only
    serving.mkdir()
    for name in ("model.pt2", "model.onnx"):
        shutil.copy(out / name, serving)
    served = serve(serving, arrays.test_x[:, None].astype(np.float32), tmp_path)
    want = reference.argmax(1)
    assert (want == arrays.test_y).mean() > 0.5  # a model that learned something: predictions are not all alike
    for fmt in ("pt2", "onnx"):
        assert served[fmt].shape == (10_000, 10), fmt
        assert (served[fmt].argmax(1) == want).all(), fmt
        np.testing.assert_allclose(log_softmax(served[fmt]), reference, atol=1e-4, err_msg=fmt)


def test_export_json_describes_the_exports(exported, checkpoint):
    meta = json.loads((exported / "export.json").read_text())
    assert meta["files"] == {"pt2": "model.pt2", "onnx": "model.onnx"}
    assert meta["input"] == {
        "name": "images",
        "dtype": "float32",
        "shape": ["batch", 1, 28, 28],
        "pixel_range": [0, 255],
    }
    assert meta["output"]["name"] == "logits" and meta["output"]["shape"] == ["batch", 10]
    assert meta["classes"] == [str(d) for d in range(10)]
    stats = lib.normalization(checkpoints.load(checkpoint))
    assert (meta["normalization"]["mean"], meta["normalization"]["std"]) == stats
    assert meta["source"] == {
        "checkpoint": checkpoint,
        "model": "cnn",
        "dataset": "mnist",
        "epoch": 1,
        "best_val_acc": 0.5,
    }
    assert set(meta["checked"]["max_abs_log_probability_difference"]) == {"pt2", "onnx"}
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] and meta["versions"]["onnx_opset"] >= 18


def test_a_fashion_mnist_ann_exports_with_its_own_normalisation(tmp_path):
    """The fully connected model (dropout, flatten) of the other dataset, through the library: export() checks
    each file against the evaluation's scorer, which uses the checkpoint's own statistics."""
    (tmp_path / "out").mkdir()
    cfg = TrainConfig(model="ann", dataset="fashion-mnist").to_dict()
    model = models.build("ann", seed=0).eval()
    ckpt = str(checkpoints.save(tmp_path, model=model, optimizer=None, config=cfg, epoch=1, history=[]))
    meta = lib.export([checkpoints.load(ckpt)], [ckpt], ("pt2", "onnx"), tmp_path / "out")
    assert max(meta["checked"]["max_abs_log_probability_difference"].values()) <= lib.TOLERANCE
    stats = data.DATASET_INFO["fashion-mnist"].normalization
    assert (meta["normalization"]["mean"], meta["normalization"]["std"]) == (stats.mean, stats.std) != (0.1307, 0.3081)
    assert meta["classes"][0] == "T-shirt/top" and meta["source"]["best_val_acc"] is None
    program = torch.export.load(tmp_path / "out" / "model.pt2").module()
    assert program(torch.zeros(1, 1, 28, 28)).shape == (1, 10)  # the batch dimension is dynamic, down to 1


def test_without_the_onnx_extra_pt2_still_exports(checkpoint, tmp_path, capsys, monkeypatch):
    real = lib.importlib.util.find_spec
    monkeypatch.setattr(
        lib.importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    out = tmp_path / "export"
    for fmt in ("all", "onnx"):
        result = call(export.main, capsys, "--checkpoint", checkpoint, "--output", str(out), "--format", fmt)
        assert_one_line_error(result, "ONNX export needs onnxscript (the [onnx] extra): run pip install '.[onnx]'")
        assert not out.exists()
    result = call(export.main, capsys, "--checkpoint", checkpoint, "--output", str(out), "--format", "pt2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == {"model.pt2", "export.json", "MANIFEST.json"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint", "{tmp}/none.pt"], "checkpoint {tmp}/none.pt does not exist: pass a model.pt"),
        (["--run", "{tmp}"], "has no best_checkpoint/model.pt: is it a finished training run"),
        (
            ["--checkpoint", "{ckpt}", "--format", "tflite"],
            "unknown export format 'tflite': pass --format pt2, onnx, all",
        ),
        (["--checkpoint", "{ckpt}", "--run", "{tmp}"], "pass only one of --checkpoint, --run and --models-dir"),
        (["--checkpoint", "{tmp}/truncated.pt"], "is corrupt or truncated"),
        (["--checkpoint", "{ckpt}", "--output", "{tmp}/taken"], "already exists: pass --overwrite or another --output"),
        (["--checkpoint", "{ckpt}", "--output", "s3:/typo/export"], "malformed URI"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, args, message):
    (tmp_path / "truncated.pt").write_bytes(Path(checkpoint).read_bytes()[:1000])
    (tmp_path / "taken").mkdir()
    before = sorted(tmp_path.rglob("*"))
    fill = {"tmp": str(tmp_path), "ckpt": checkpoint}
    argv = [a.format(**fill) for a in args]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "export")]
    assert_one_line_error(call(export.main, capsys, *argv), message.format(**fill))
    assert sorted(tmp_path.rglob("*")) == before


def test_a_failed_check_publishes_nothing_and_overwrite_replaces(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "export"
    args = ["--checkpoint", checkpoint, "--output", str(out), "--format", "pt2"]
    result = call(export.main, capsys, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"pt2: {out / 'model.pt2'} (scores as the checkpoint does" in result.stdout
    before = (out / "MANIFEST.json").read_text()
    monkeypatch.setattr(lib, "TOLERANCE", -1.0)  # no export can pass: the check must stop publication
    result = call(export.main, capsys, *args, "--overwrite")
    assert_one_line_error(result, "model.pt2 does not reproduce the checkpoint (largest log-probability difference")
    assert (out / "MANIFEST.json").read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    monkeypatch.undo()
    assert call(export.main, capsys, *args, "--overwrite").returncode == 0
    assert (out / "MANIFEST.json").read_text() != before  # replaced: a new manifest (written_at)


def test_export_to_s3(s3_server, checkpoint, tmp_path, capsys):
    target = f"{make_bucket('mnist-ray-tests')}/{uuid.uuid4().hex[:8]}/export"
    result = call(export.main, capsys, "--checkpoint", checkpoint, "--output", target, "--format", "pt2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert publishing.is_complete(target)
    local = storage.download_file(storage.join(target, "model.pt2"), tmp_path / "model.pt2")
    assert torch.export.load(local).module()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
