"""Tests for mnist_ray.reports.plots: every figure is a readable PNG written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mnist_ray.reports import plots


def _check_png(path: Path, written: Path) -> None:
    assert written == path
    assert path.is_file()
    with path.open("rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert width > 200 and height > 200
    assert not [name for name in os.listdir(path.parent) if ".tmp" in name]
    assert not plt.get_fignums(), "figure left open"


def _history(epochs: int = 5) -> pd.DataFrame:
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": 0.9 / epoch,
            "train_acc": 1 - 0.2 / epoch,
            "val_loss": 1.0 / epoch + 0.05,
            "val_acc": 1 - 0.25 / epoch,
        }
    )


def test_plot_curves(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    _check_png(path, plots.plot_curves(_history(), path, title="cnn, 2 workers"))


def test_plot_curves_single_epoch(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    _check_png(path, plots.plot_curves(_history(1), str(path)))


def test_plot_confusion(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 8, size=(10, 10))
    matrix[np.diag_indices(10)] = rng.integers(950, 1130, size=10)
    path = tmp_path / "sub" / "confusion.png"
    _check_png(path, plots.plot_confusion(matrix, path, title="test set"))
    names = [f"d{i}" for i in range(10)]
    _check_png(path, plots.plot_confusion(np.zeros((10, 10), dtype=int), path, class_names=names))


def test_plot_digit_errors(tmp_path: Path) -> None:
    errors = pd.DataFrame({"digit": [1, 0, 6, 3, 2, 4, 5, 7, 8, 9], "errors": [3, 5, 7, 9, 11, 12, 14, 15, 18, 21]})
    errors["total"] = 1000
    errors["error_rate"] = errors["errors"] / errors["total"]
    errors["rank"] = np.arange(1, 11)
    path = tmp_path / "digit_errors.png"
    _check_png(path, plots.plot_digit_errors(errors, path, title="errors per digit"))


@pytest.mark.parametrize("k", [0, 1, 13, 64])
def test_plot_misclassified(tmp_path: Path, k: int) -> None:
    rng = np.random.default_rng(k)
    images = rng.integers(0, 256, size=(k, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=k)
    predicted = (labels + 1) % 10
    confidence = rng.uniform(0.5, 1.0, size=k)
    path = tmp_path / "misclassified.png"
    _check_png(path, plots.plot_misclassified(images, labels, predicted, confidence, path))


def test_plot_history(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {
            "run_id": [f"20260509T0{h}0000Z" for h in range(6)],
            "accuracy": [0.981, 0.983, 0.979, 0.985, 0.986, 0.984],
            "started_at": [f"2026-05-09T0{h}:00:00+00:00" for h in range(6)],
        }
    )
    path = tmp_path / "history.png"
    _check_png(path, plots.plot_history(history, path))
    _check_png(path, plots.plot_history(history.head(1), path))


def test_plot_tune(tmp_path: Path) -> None:
    trials = pd.DataFrame(
        {
            "trial_id": [f"t{i}" for i in range(6)],
            "lr": [1e-4, 1e-3, 1e-2, 3e-4, 3e-3, 3e-2],
            "optimizer": ["sgd", "sgd", "sgd", "adam", "adam", "adam"],
            "best_val_acc": [0.90, 0.95, 0.97, 0.96, 0.98, 0.93],
        }
    )
    epoch = np.arange(1, 4)
    curves = {t: pd.DataFrame({"epoch": epoch, "val_acc": [0.9, 0.95, a]}) for t, a in [("t4", 0.98), ("t2", 0.97)]}
    path = tmp_path / "tune.png"
    _check_png(path, plots.plot_tune(trials, curves, path))
    _check_png(path, plots.plot_tune(trials, {}, path))


def test_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    path = blocker / "curves.png"
    with pytest.raises(OSError):
        plots.plot_curves(_history(), path)
    assert not path.exists()
    assert not plt.get_fignums()


def test_savefig_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_savefig(self: Figure, fname: object, **kwargs: object) -> None:
        Path(str(fname)).write_bytes(b"\x89PNG half written")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    path = tmp_path / "confusion.png"
    with pytest.raises(OSError, match="disk full"):
        plots.plot_confusion(np.eye(10, dtype=int) * 100, path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []
    assert not plt.get_fignums()


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _errors(noun: str = "digit") -> pd.DataFrame:
    errors = pd.DataFrame({noun: [1, 0, 6, 3, 2, 4, 5, 7, 8, 9], "errors": [3, 5, 7, 9, 11, 12, 14, 15, 18, 21]})
    errors["total"] = 1000
    return errors


def test_class_names_label_every_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fashion-MNIST's names on the axes and in the gallery titles (the same functions MNIST uses)."""
    drawn: list[str] = []
    save = plots._save

    def keep_labels(fig: Figure, where: Path) -> Path:
        drawn.extend(ax.get_title() for ax in fig.axes)
        drawn.extend(t.get_text() for ax in fig.axes for t in ax.get_xticklabels())
        return save(fig, where)

    monkeypatch.setattr(plots, "_save", keep_labels)
    path = tmp_path / "errors.png"
    _check_png(path, plots.plot_digit_errors(_errors("class"), path, class_names=FASHION, noun="class"))
    assert drawn[1:4] == ["Trouser", "T-shirt/top", "Shirt"]  # in the frame's (ranked) order
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    path = tmp_path / "misclassified.png"
    _check_png(path, plots.plot_misclassified(images, [0, 9, 3], [6, 7, 0], [0.9, 0.8, 0.7], path, class_names=FASHION))
    assert "true T-shirt/top\npred Shirt (0.90)" in drawn and "true Ankle boot\npred Sneaker (0.80)" in drawn


def test_plot_comparison_and_disagreements(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    matrices = [rng.integers(0, 50, size=(10, 10)) for _ in range(3)]
    panels = [(f"model {i}", m, _errors()) for i, m in enumerate(matrices)]
    path = tmp_path / "comparison.png"
    _check_png(path, plots.plot_comparison(panels, path))
    assert mpimg.imread(path).shape[1] > 3 * 600  # one column per model
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    rows = [("cnn wrong, ann right", images, np.arange(5), np.arange(1, 6), np.full(5, 0.9))]
    rows.append(("ann wrong, cnn right", images[:0], np.arange(0), np.arange(0), np.arange(0.0)))  # none
    path = tmp_path / "disagreements.png"
    _check_png(path, plots.plot_disagreements(rows, path, class_names=FASHION))
