"""Model registry and output shapes."""

from __future__ import annotations

import pytest
import torch

from mnist_ray.errors import ConfigError
from mnist_ray.training import models, optim


@pytest.mark.parametrize("name", ["ann", "cnn", "cnn_wide", "cnn_deep"])
def test_output_shape_and_gradients(name):
    model = models.build(name, seed=0)
    x = torch.randn(5, 1, 28, 28)
    out = model(x)
    assert out.shape == (5, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cnn_has_batch_norm_and_pooling():
    kinds = {type(m) for m in models.build("cnn").modules()}
    assert torch.nn.BatchNorm2d in kinds and torch.nn.MaxPool2d in kinds and torch.nn.Conv2d in kinds


def test_the_wide_cnn_is_the_cnn_at_twice_the_width():
    """Same layers, so the same state-dict keys; the CNN itself is unchanged, so its checkpoints still load."""
    cnn, wide = models.build("cnn").state_dict(), models.build("cnn_wide").state_dict()
    assert list(cnn) == list(wide)
    assert sum(p.numel() for p in models.build("cnn").parameters()) == 98_554
    assert wide["0.weight"].shape == (32, 1, 3, 3) and wide["13.weight"].shape == (256, 128 * 3 * 3)


def test_seeded_build_is_reproducible():
    a, b = models.build("cnn", seed=3), models.build("cnn", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown model 'vit'; valid models: ann, cnn, cnn_wide, cnn_deep"):
        models.build("vit")


def test_weight_decay_skips_biases_and_norms():
    decay, no_decay = optim.param_groups(models.build("cnn"), 1e-4)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_cpu_threads_flush_denormals_to_zero():
    """Denormal floats (below 1.2e-38) slowed training steps 6.6-12.8x here; a worker's torch flushes them to zero."""
    threads = torch.get_num_threads()
    flushing = (torch.tensor([1e-39]) * 1.0).item() == 0.0  # an earlier in-process loop of the suite may set it
    try:
        torch.set_flush_denormal(False)
        tiny = torch.tensor([1e-39])  # made after the flag is off: made while flushing, it would already be 0
        assert (tiny * 1.0).item() > 0  # torch's default: a denormal survives arithmetic
        models.set_cpu_threads(1)
        assert torch.get_num_threads() == 1 and (tiny * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(flushing)
        torch.set_num_threads(threads)
