"""Losses of the Fuse4Seg benchmark (paper Sec. 3.5) and CDDFuse's fusion terms, as plain functions.

Every function disables autocast and computes in float32 (inputs are up-cast), so the values and their
reductions are the same with and without AMP.

- Lower level (3.5.1): ``segmentation_loss`` = CE + class-weighted multi-class soft Dice (``dice_loss``).
- Upper level (3.5.2): ``decomposition_loss`` (CDDFuse's CC form), ``gradient_loss`` (Sobel, CDDFuse's max-gradient
  target), ``anchor_loss`` (MSE to the physical prior); the method weighs them (``methods/fuse4seg.py``).
- ``intensity_loss``: CDDFuse's L1-to-max intensity term, for fusion-only training.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..nn.functional import float32_region

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
CC_EPS = torch.finfo(torch.float32).eps


def _float32(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``fn`` with autocast off and every floating-point tensor argument up-cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]

        def up(v: Any) -> Any:
            return v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v

        with float32_region(tensors[0] if tensors else torch.empty(0)):
            return fn(*(up(v) for v in args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper


# --------------------------------------------------------------------------------------------- segmentation


@_float32
def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | list[float] | None = None,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """Weighted multi-class soft Dice loss: sum_c w_c (1 - Dice_c) / sum_c w_c.

    Dice_c = (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth), sums over the whole batch and all pixels
    (batch Dice: a class absent from one slice does not produce a 0/0 term). ``logits`` (B, C, H, W), ``target``
    (B, H, W) integer labels, ``class_weights`` length C (uniform if None).
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    if class_weights is None:
        weights = torch.ones_like(dice)
    else:
        weights = torch.as_tensor(class_weights, dtype=dice.dtype, device=dice.device)
    return (weights * (1.0 - dice)).sum() / weights.sum()


@_float32
def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    class_weights: torch.Tensor | list[float] | None = None,
    smooth: float = 1e-5,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Lower-level objective (3.5.1): ce_weight * CE(logits, target) + dice_weight * weighted Dice.

    The class weights enter the Dice term only, as in the paper's formula; the cross-entropy is unweighted.
    """
    ce = F.cross_entropy(logits, target.long())
    return ce_weight * ce + dice_weight * dice_loss(logits, target, class_weights, smooth)


# --------------------------------------------------------------------------------------------- fusion / physical


def _correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each (sample, channel) map over its pixels, clamped to [-1, 1], averaged; 0 (with
    finite gradients) where a map is constant."""
    x = x.flatten(2)
    y = y.flatten(2)
    x = x - x.mean(dim=-1, keepdim=True)
    y = y - y.mean(dim=-1, keepdim=True)
    # the epsilon inside the root keeps its gradient finite on a constant map (a black patch), where
    # sqrt(0) would give 0 * inf = NaN; elsewhere it is CDDFuse's eps + sqrt(sum x^2 * sum y^2) to within 1e-14
    cc = (x * y).sum(-1) / (x.square().sum(-1) * y.square().sum(-1) + CC_EPS**2).sqrt()
    return cc.clamp(-1.0, 1.0).mean()


@_float32
def decomposition_loss(
    low_a: torch.Tensor, low_b: torch.Tensor, high_a: torch.Tensor, high_b: torch.Tensor
) -> torch.Tensor:
    """Frequency decomposition loss (3.5.2, CDDFuse's form): CC(high_a, high_b)^2 / (1.01 + CC(low_a, low_b)).

    CC is the Pearson correlation per sample and channel over the pixels, averaged over batch and channels.
    Minimising it decorrelates the modality-specific high-frequency features and correlates the shared
    low-frequency ones. Range [0, 100]: 0 for uncorrelated high features, 1 / 0.01 when the high features are
    identical and the low ones anti-correlated; 1.01 keeps the denominator positive.
    """
    return _correlation(high_a, high_b).square() / (1.01 + _correlation(low_a, low_b))


@_float32
def sobel_gradient(x: torch.Tensor) -> torch.Tensor:
    """|Sobel_x * x| + |Sobel_y * x| per channel of a (B, C, H, W) map (CDDFuse's ``Sobelxy``).

    Replicate padding (CDDFuse pads with zeros): the border of a bright image then has no artificial edge, so the
    gradient loss does not ask the fused image to reproduce the image frame.
    """
    channels = x.shape[1]
    kx = torch.tensor(SOBEL_X, dtype=x.dtype, device=x.device)
    kernels = torch.stack((kx, kx.T)).unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
    grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernels, groups=channels)
    return grads.abs().unflatten(1, (channels, 2)).sum(2)


@_float32
def gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spatial gradient loss (3.5.2): L1(|grad F|, max(|grad A|, |grad B|)) with the Sobel operator."""
    return F.l1_loss(sobel_gradient(fused), torch.maximum(sobel_gradient(a), sobel_gradient(b)))


@_float32
def anchor_loss(fused: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Physical reconstruction anchor (3.5.2): MSE(F, P) to the deterministic physical prior P.

    P must live in the fused image's domain (``JointMethod.prior``): the plain average (A + B) / 2 for a sigmoid
    output, its per-image min-max for a min-max normalised one. An anchor F cannot reach (the raw average of a dim
    slice under min-max) rewards the leader for planting extreme pixels that defeat the normalisation.
    """
    return F.mse_loss(fused, prior)


@_float32
def intensity_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CDDFuse's fusion intensity term: L1(F, max(A, B)) (for the fusion-only engine)."""
    return F.l1_loss(fused, torch.maximum(a, b))
