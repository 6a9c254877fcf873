"""Small tensor functions shared by networks and recipes."""

from __future__ import annotations

import contextlib

import torch

MINMAX_EPS = 1e-6


def minmax_per_image(y: torch.Tensor, eps: float = MINMAX_EPS) -> torch.Tensor:
    """Map every image of a (B, C, H, W) batch to [0, 1] by its own min and max (float32, epsilon-guarded).

    The epsilon only matters for an (almost) constant image, which then maps to values near 0 instead of dividing
    by zero.
    """
    y = y.float()
    lo = y.amin(dim=(1, 2, 3), keepdim=True)
    hi = y.amax(dim=(1, 2, 3), keepdim=True)
    return (y - lo) / (hi - lo).clamp_min(eps)


def pearson_per_image(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each image pair of two (B, C, H, W) batches over all its pixels -> (B,)."""
    x = x.float().flatten(1)
    y = y.float().flatten(1)
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp_min(eps)


def float32_region(x: torch.Tensor):
    """A context in which autocast is off for ``x``'s device (a no-op on the meta device, where FLOP counts are
    taken without computing anything)."""
    if x.device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)
