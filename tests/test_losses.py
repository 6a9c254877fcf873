"""Losses: hand-computed small cases, limits, the anchor identity, AMP behaviour and the leader objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.training.losses import (
    anchor_loss,
    decomposition_loss,
    dice_loss,
    gradient_loss,
    intensity_loss,
    segmentation_loss,
    sobel_gradient,
)


def _perfect_logits(target: torch.Tensor, num_classes: int = 4, margin: float = 50.0) -> torch.Tensor:
    return margin * F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------------------------- segmentation


def test_dice_of_perfect_prediction_is_zero():
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, 0, :4] = torch.arange(4)  # every class present
    assert dice_loss(_perfect_logits(target), target).item() < 1e-6


def test_dice_hand_computed_two_classes():
    # probabilities exactly (1, 0) / (0, 1): pixels 0, 1 predicted class 0, pixel 2 predicted class 1
    logits = torch.tensor([[100.0, 100.0, -100.0], [-100.0, -100.0, 100.0]]).reshape(1, 2, 1, 3)
    target = torch.tensor([0, 1, 1]).reshape(1, 1, 3)
    # class 0: I = 1, |P| = 2, |G| = 1 -> 2/3 ; class 1: I = 1, |P| = 1, |G| = 2 -> 2/3
    assert dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 / 3, abs=1e-6)
    target2 = torch.tensor([0, 0, 1]).reshape(1, 1, 3)  # class 0 perfect, class 1 perfect too
    assert dice_loss(logits, target2, smooth=0.0).item() == pytest.approx(0.0, abs=1e-6)
    target3 = torch.tensor([1, 1, 1]).reshape(1, 1, 3)
    # class 0: I = 0, |P| = 2, |G| = 0 -> 0 ; class 1: I = 1, |P| = 1, |G| = 3 -> 1/2
    assert dice_loss(logits, target3, smooth=0.0).item() == pytest.approx((1.0 + 0.5) / 2, abs=1e-6)
    weighted = dice_loss(logits, target3, class_weights=[1.0, 3.0], smooth=0.0).item()
    assert weighted == pytest.approx((1 * 1.0 + 3 * 0.5) / 4, abs=1e-6)


def test_dice_is_computed_over_the_batch():
    # class 1 absent from sample 0 and perfectly predicted in sample 1: batch Dice is 1, not 0.5
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[1, :2] = 1
    logits = _perfect_logits(target, num_classes=2)
    assert dice_loss(logits, target, smooth=0.0).item() < 1e-6


def test_segmentation_loss_is_ce_plus_weighted_dice():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 6, 5), torch.randint(0, 4, (2, 6, 5))
    weights = [0.1, 1.0, 1.0, 2.0]
    ce = F.cross_entropy(logits, target)
    dice = dice_loss(logits, target, class_weights=weights)
    plain = segmentation_loss(logits, target, class_weights=weights)
    assert plain.item() == pytest.approx((ce + dice).item(), rel=1e-6)
    combo = segmentation_loss(logits, target, class_weights=weights, ce_weight=0.5, dice_weight=2.0)
    assert combo.item() == pytest.approx((0.5 * ce + 2.0 * dice).item(), rel=1e-6)
    only_ce = segmentation_loss(logits, target, dice_weight=0.0)
    assert only_ce.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    # uniform CE over 4 classes
    uniform = segmentation_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), dice_weight=0.0)
    assert uniform.item() == pytest.approx(math.log(4), rel=1e-6)


def test_segmentation_loss_gradient_and_half_precision_inputs():
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 6))
    loss = segmentation_loss(logits.half(), target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- decomposition


def test_decomposition_loss_limits():
    torch.manual_seed(2)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    # identical high and low features: 1 / (1.01 + 1)
    assert decomposition_loss(x, x, y, y).item() == pytest.approx(1 / 2.01, rel=1e-5)
    # anti-correlated low features, identical high features: 1 / 0.01 (upper limit)
    assert decomposition_loss(x, -x, y, y).item() == pytest.approx(100.0, rel=1e-3)
    # anti-correlated high features count like correlated ones (squared CC)
    assert decomposition_loss(x, x, y, -y).item() == pytest.approx(1 / 2.01, rel=1e-5)
    # orthogonal (zero-mean, uncorrelated) high features: 0 (lower limit)
    h1 = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 1, 2, 2)
    h2 = torch.tensor([1.0, 1.0, -1.0, -1.0]).reshape(1, 1, 2, 2)
    assert decomposition_loss(h1, h1, h1, h2).item() == pytest.approx(0.0, abs=1e-7)


def test_decomposition_loss_is_nonnegative_and_prefers_correlated_low_features():
    torch.manual_seed(3)
    low, high_a, high_b = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    noisy = low + torch.randn_like(low)
    loss_corr = decomposition_loss(low, low, high_a, high_b)
    loss_less = decomposition_loss(low, noisy, high_a, high_b)
    assert 0.0 <= loss_corr.item() < loss_less.item()


def test_decomposition_loss_and_its_gradient_are_finite_on_constant_maps():
    # a black patch of a real image makes every feature map of the leader constant: sqrt(0) in the correlation's
    # denominator gave a NaN gradient (0 * inf) that spread through the network in one step
    torch.manual_seed(4)
    flat = torch.ones(2, 3, 4, 4, requires_grad=True)
    other = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = decomposition_loss(flat, other, flat * 2, other)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(flat.grad).all() and torch.isfinite(other.grad).all()


def test_decomposition_loss_matches_cddfuses_correlation_on_non_constant_maps():
    def cddfuse_cc(x, y):  # its utils: eps + sqrt(sum x^2) * sqrt(sum y^2), per sample and channel
        x = x.flatten(2) - x.flatten(2).mean(-1, keepdim=True)
        y = y.flatten(2) - y.flatten(2).mean(-1, keepdim=True)
        eps = torch.finfo(torch.float32).eps
        return ((x * y).sum(-1) / (eps + x.square().sum(-1).sqrt() * y.square().sum(-1).sqrt())).clamp(-1, 1).mean()

    torch.manual_seed(5)
    low_a, low_b, high_a, high_b = (torch.randn(2, 4, 8, 8) for _ in range(4))
    low_b = low_b + low_a
    expected = cddfuse_cc(high_a, high_b) ** 2 / (1.01 + cddfuse_cc(low_a, low_b))
    assert decomposition_loss(low_a, low_b, high_a, high_b).item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------- gradient / intensity


def test_sobel_gradient_hand_computed_ramp_and_flat_border():
    ramp = torch.arange(5.0).repeat(5, 1).reshape(1, 1, 5, 5)  # x-ramp of slope 1
    grad = sobel_gradient(ramp)
    assert torch.allclose(grad[..., :, 1:-1], torch.full((1, 1, 5, 3), 8.0))  # |(-1,0,1)*(1,2,1)| = 8 per unit slope
    assert torch.allclose(grad[..., :, 0], torch.full((1, 1, 5), 4.0))  # replicate padding: one-sided difference
    # a constant image has no gradient anywhere, border included (no artificial frame edge)
    assert torch.allclose(sobel_gradient(torch.full((1, 2, 6, 6), 0.7)), torch.zeros(1, 2, 6, 6), atol=1e-6)


def test_sobel_gradient_is_per_channel():
    torch.manual_seed(4)
    x = torch.rand(2, 3, 7, 6)
    per_channel = torch.cat([sobel_gradient(x[:, c : c + 1]) for c in range(3)], dim=1)
    assert torch.allclose(sobel_gradient(x), per_channel)


def test_gradient_loss_zero_when_fused_is_the_sharper_source():
    torch.manual_seed(5)
    a = torch.rand(2, 1, 12, 12)
    b = 0.5 * a + 0.2  # half the gradient of a everywhere
    assert gradient_loss(a, a, b).item() == pytest.approx(0.0, abs=1e-7)
    assert gradient_loss(b, a, b).item() > 1e-3
    # value check: fused flat -> mean of max(|grad a|, |grad b|)
    flat = torch.zeros_like(a)
    assert gradient_loss(flat, a, b).item() == pytest.approx(sobel_gradient(a).mean().item(), rel=1e-6)


def test_intensity_loss_is_l1_to_the_max():
    a = torch.tensor([0.0, 1.0, 0.5]).reshape(1, 1, 1, 3)
    b = torch.tensor([1.0, 0.0, 0.25]).reshape(1, 1, 1, 3)
    assert intensity_loss(torch.maximum(a, b), a, b).item() == 0.0
    assert intensity_loss(torch.zeros_like(a), a, b).item() == pytest.approx(2.5 / 3)


# --------------------------------------------------------------------------------------------- anchor


def test_anchor_is_the_mse_to_the_prior():
    torch.manual_seed(6)
    f, prior = torch.rand(3, 1, 9, 7), torch.rand(3, 1, 9, 7)
    assert anchor_loss(f, prior).item() == pytest.approx(((f - prior) ** 2).mean().item(), rel=1e-6)
    assert anchor_loss(prior, prior).item() == 0.0


# --------------------------------------------------------------------------------------------- AMP / leader objective


def test_losses_return_float32_from_half_inputs_and_match_float32():
    torch.manual_seed(7)
    f, a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    for fn in (gradient_loss, intensity_loss, lambda f, a, b: anchor_loss(f, a)):
        half = fn(f.half(), a.half(), b.half())
        assert half.dtype == torch.float32
        assert half.item() == pytest.approx(fn(f.half().float(), a.half().float(), b.half().float()).item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gradient_loss(f, a, b)
    assert inside.dtype == torch.float32 and inside.item() == pytest.approx(gradient_loss(f, a, b).item(), rel=1e-6)


def test_losses_deterministic():
    torch.manual_seed(9)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    f, a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    first = (segmentation_loss(logits, target), gradient_loss(f, a, b), decomposition_loss(a, b, f, a))
    second = (segmentation_loss(logits, target), gradient_loss(f, a, b), decomposition_loss(a, b, f, a))
    assert all(torch.allclose(x, y, rtol=1e-6, atol=0) for x, y in zip(first, second))
