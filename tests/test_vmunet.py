"""VM-UNet pieces the contract tests cannot see: its Dice against a hand computation, its cosine schedule, the
cross scan, the augmentation's geometry, the full-size parameter count and the mapping back to any H, W."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.methods import load_method
from methods._vss_blocks import _cross_scan
from methods.vmunet import dice_loss, rotate_nearest, synapse_augment


def test_dice_matches_a_hand_computation():
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])  # 1 sample, 2 classes, a 1 x 2 image
    target = torch.tensor([[[0, 1]]])
    p = 1 / (1 + math.exp(-2))  # softmax of (2, 0)
    # class 0: probabilities (0.5, p), target (1, 0); class 1: (0.5, 1 - p), target (0, 1)
    d0 = (2 * 0.5 + 1e-5) / (0.25 + p * p + 1 + 1e-5)
    d1 = (2 * (1 - p) + 1e-5) / (0.25 + (1 - p) ** 2 + 1 + 1e-5)
    assert float(dice_loss(logits, target)) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-6)


def test_cosine_schedule_is_pytorchs_past_t_max():
    method = load_method("vmunet")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100, eta_min=1e-5)
    for epoch in range(250):
        assert method.lr_at(epoch) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        optimizer.step()
        scheduler.step()


def test_cross_scan_orders_and_merge():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    xs, merge = _cross_scan(x)
    assert torch.equal(xs[:, 0], x.flatten(2))
    assert torch.equal(xs[:, 1], x.transpose(2, 3).flatten(2))
    assert torch.equal(xs[:, 2], x.flatten(2).flip(-1)) and torch.equal(xs[:, 3], xs[:, 1].flip(-1))
    assert torch.equal(merge(xs), 4 * x)  # each direction's output lands back on its own token


def test_rotation_geometry_and_aligned_augmentation():
    square = torch.arange(36.0).view(1, 6, 6)
    assert torch.equal(rotate_nearest(square, 0), square)
    turned = rotate_nearest(square, 90)
    assert any(torch.equal(turned, square.rot90(k, dims=(-2, -1))) for k in (1, 3))
    labels = torch.randint(0, 4, (6, 8, 8), generator=torch.Generator().manual_seed(0))
    images = torch.stack([labels.float(), -labels.float()], dim=1)
    out_images, out_labels = synapse_augment(images, labels, torch.Generator().manual_seed(3))
    again, _ = synapse_augment(images, labels, torch.Generator().manual_seed(3))
    assert torch.equal(out_images, again)
    assert torch.equal(out_images[:, 0], out_labels.float()) and torch.equal(out_images[:, 1], -out_labels.float())
    assert not torch.equal(out_labels, labels)


def test_full_size_count_and_mapping_back_to_the_slice():
    full = load_method("vmunet").networks()["segmenter"]
    assert sum(p.numel() for p in full.parameters()) == 27_427_636 - 16 * 96  # one input channel fewer
    method = load_method("vmunet", {**load_method("vmunet").test_config, "input_size": 64})
    net = method.networks()["segmenter"].eval()
    with torch.no_grad():
        out = method.segment({"segmenter": net}, torch.rand(1, 2, 17, 22))
    assert out.shape == (1, 4, 17, 22)
