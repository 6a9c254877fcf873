"""Contract tests run over every discovered method, at its own tiny ``test_config`` (benchopt style)."""

from __future__ import annotations

import pytest
import torch

from benchmark.methods import discover_methods, load_method
from benchmark.training.follower import NUM_CLASSES, build_follower
from benchmark.training.losses import segmentation_loss

METHODS, PROBLEMS = discover_methods()
TINY_FOLLOWER = {"dims": [4, 8, 16, 32], "bottleneck_heads": 2}
H, W = 17, 22  # odd and even on purpose


def test_every_method_file_is_valid():
    assert PROBLEMS == {}, PROBLEMS


def _sources(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, H, W, generator=g), torch.rand(2, 1, H, W, generator=g)


def _build(name: str):
    torch.manual_seed(0)
    method = load_method(name, METHODS[name].test_config)
    kind = method.kind
    if kind == "fusion":
        return method, method.build()
    if kind == "joint":
        return method, method.build_leader()
    return method, method.build(2, NUM_CLASSES)


def _forward(method, model, a, b):
    if method.kind == "fusion":
        return model(a, b)
    if method.kind == "joint":
        return model(a, b).fused
    return model(torch.cat([a, b], dim=1))


def _loss(method, model, a, b):
    if method.kind == "fusion":
        return method.fusion_loss(model, a, b)[0]
    if method.kind == "joint":
        return method.physical_loss(model(a, b), a, b)[0]
    target = torch.randint(0, NUM_CLASSES, (a.shape[0], H, W), generator=torch.Generator().manual_seed(1))
    return segmentation_loss(model(torch.cat([a, b], dim=1)), target)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_output_shape_and_range(name):
    method, model = _build(name)
    a, b = _sources()
    with torch.no_grad():
        out = _forward(method, model, a, b)
    if method.kind == "multichannel":
        assert out.shape == (2, NUM_CLASSES, H, W)
    else:
        assert out.shape == (2, 1, H, W)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_deterministic_for_a_fixed_seed(name):
    a, b = _sources()
    method, first = _build(name)
    _, second = _build(name)
    assert torch.equal(_forward(method, first, a, b), _forward(method, second, a, b))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_training_step_changes_parameters(name):
    method, model = _build(name)
    params = [p for p in model.parameters() if p.requires_grad]
    if method.kind == "fusion" and not method.trainable:
        assert params == [] or all(not p.requires_grad for p in params)
        return
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loss = _loss(method, model, *_sources())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b0, p) for b0, p in zip(before, params))


def test_shared_follower_segments_any_fused_image():
    follower = build_follower(TINY_FOLLOWER)
    logits = follower(torch.rand(2, 1, H, W))
    assert logits.shape == (2, NUM_CLASSES, H, W)
