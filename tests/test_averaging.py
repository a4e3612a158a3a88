"""The stronger recipe's ingredients, without Ray: the moving average of the weights (``--ema``), its checkpoint and
resume, and elastic distortion (``--elastic``).

The Ray Train worker calls the same functions (:mod:`mnist_ray.training.step`, :mod:`mnist_ray.training.checkpoints`),
so these plain loops are what it runs.
"""

from __future__ import annotations

import pytest
import torch

from mnist_ray import data
from mnist_ray.errors import ConfigError
from mnist_ray.settings.config import TrainConfig
from mnist_ray.training import checkpoints, models, step, worker

TINY = {"epochs": 2, "train_limit": 128, "val_size": 64, "batch_size": 64, "num_workers": 1, "ema": 0.9}
CPU = torch.device("cpu")


def _shards(cfg: TrainConfig):
    arrays = data.load("mnist")
    train_idx, val_idx = data.split_train_val(len(arrays.train_x), cfg.val_size, cfg.seed, cfg.train_limit)
    train = worker.shard(arrays.train_x[train_idx], arrays.train_y[train_idx], 0, 1, CPU, equal=True)
    val = worker.shard(arrays.train_x[val_idx], arrays.train_y[val_idx], 0, 1, CPU, equal=False)
    return train, val


def _state(cfg: TrainConfig, **resume) -> step.WorkerState:
    return step.WorkerState.create(models.build(cfg.model, cfg.dropout, seed=cfg.seed), *_shards(cfg), cfg, **resume)


def _equal(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_average_moves_one_step_toward_the_weights_and_is_what_is_validated():
    cfg = TrainConfig(**{**TINY, "batch_size": 128})  # one step per epoch
    state = _state(cfg)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    assert _equal(state.average.state_dict(), before)  # it starts as the initial weights
    step.train_epoch(state, 0)
    after, average = state.model.state_dict(), state.average.state_dict()
    for key, value in average.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * after[key], rtol=0, atol=1e-6)
        else:  # batch norm's step count
            assert torch.equal(value, after[key]) and int(value) == 1
    assert not torch.equal(average["0.weight"], after["0.weight"])
    assert all(not p.requires_grad for p in state.average.parameters())
    # Validation scores the average, not the trained weights.
    assert state.evaluated is state.average
    x, y = state.val
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(state.average(x), y).item()
    assert step.evaluate(state)[0] == pytest.approx(expected, rel=1e-5)
    assert _state(TrainConfig(**{**TINY, "ema": 0.0})).average is None  # off by default


def test_a_resumed_run_continues_the_weights_and_their_average_exactly(tmp_path):
    """Two epochs at once, or one, a checkpoint, and one more from it: the same weights and the same average.

    The checkpoint's ``state_dict`` is the average (what evaluation, prediction and export load); the trained
    weights ride beside it for the resume.
    """
    cfg = TrainConfig(**TINY)
    straight = _state(cfg)
    for epoch in range(2):
        step.fit_epoch(straight, epoch)

    first = _state(cfg)
    step.fit_epoch(first, 0)
    checkpoints.save(
        tmp_path,
        model=first.evaluated,
        trained=first.model,
        optimizer=first.optimizer,
        config=cfg.to_dict(),
        epoch=1,
        history=[],
    )
    saved = checkpoints.load(tmp_path)
    assert _equal(saved["state_dict"], first.average.state_dict())
    assert _equal(checkpoints.build_model(saved).state_dict(), first.average.state_dict())
    trained, average = checkpoints.resume_weights(saved)
    assert _equal(trained, first.model.state_dict()) and not _equal(trained, average)

    model = models.build(cfg.model, cfg.dropout, seed=cfg.seed)
    model.load_state_dict(trained)
    resumed = step.WorkerState.create(
        model, *_shards(cfg), cfg, optimizer_state=saved["optimizer"], average_state=average
    )
    step.fit_epoch(resumed, 1)
    assert _equal(resumed.model.state_dict(), straight.model.state_dict())
    assert _equal(resumed.average.state_dict(), straight.average.state_dict())


def test_a_checkpoint_without_an_average_resumes_as_before(tmp_path):
    model = models.build("cnn", seed=0)
    checkpoints.save(tmp_path, model=model, optimizer=None, config=TrainConfig().to_dict(), epoch=1, history=[])
    trained, average = checkpoints.resume_weights(checkpoints.load(tmp_path))
    assert average is None and _equal(trained, model.state_dict())


def _ramp() -> torch.Tensor:
    """Two images whose value is the pixel's column: a sampled value is the column it was read from."""
    return torch.arange(28.0).expand(2, 1, 28, 28).clone()


def test_elastic_distortion_bends_images_by_at_most_its_pixels_on_top_of_the_affine_part():
    stats = data.Normalization(0.0, 1.0)  # background 0: the ramp is sampled as it is
    affine = step.random_affine(_ramp(), torch.Generator().manual_seed(0), stats)
    bent = step.random_affine(_ramp(), torch.Generator().manual_seed(0), stats, elastic=2.0)
    inner = (slice(None), 0, slice(6, 22), slice(6, 22))  # away from the zero padding the border reads
    moved = (bent - affine)[inner].abs()  # the same affine draw first, then the displacement: columns moved
    assert 0.5 < float(moved.max()) <= 2.0 * 1.25  # bicubic between knots may overshoot a little
    blank = torch.full((4, 1, 28, 28), -0.1307 / 0.3081)
    out = step.random_affine(blank, torch.Generator().manual_seed(0), elastic=2.0)
    assert torch.allclose(out, blank, atol=1e-5)  # a blank image stays blank


def test_elastic_without_augmentation_is_refused():
    with pytest.raises(ConfigError, match="elastic distortion is part of augmentation: pass --augment yes"):
        TrainConfig(augment=False, elastic=1.0)
    with pytest.raises(ConfigError, match=r"ema must be in \[0, 1\), got 1"):
        TrainConfig(ema=1.0)
