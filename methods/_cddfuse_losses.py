"""CDDFuse's image losses as its pinned code computes them (kornia 0.2.0 and ``utils/loss.py``), without kornia.

- ``ssim_loss``: ``kornia.losses.SSIM(11, reduction='mean')`` of kornia 0.2.0: an 11 x 11 Gaussian window
  (sigma 1.5, normalised), reflect padding of 5 (its ``filter2D`` default), C1 = 0.01^2, C2 = 0.03^2 (max_val 1),
  loss = mean of clamp(1 - SSIM, 0, 1) / 2 (the clamp comes before the halving in 0.2.0).
- ``spatial_gradient``: ``kornia.filters.SpatialGradient()`` of kornia 0.2.0: Sobel kernels divided by their L1
  norm (8), replicate padding, signed output (B, C, 2, H, W) with d/dx first.
- ``sobel_magnitude``: CDDFuse's ``Sobelxy``: |Sobel_x * x| + |Sobel_y * x| with the unnormalised kernels and zero
  padding (``F.conv2d(padding=1)``). (``benchmark.training.losses.sobel_gradient`` pads by replication instead.)

Inputs are computed in float32 (the recipe calls these outside autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) outer product of the normalised 1-D Gaussian exp(-(i - size // 2)^2 / (2 sigma^2))."""
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """kornia 0.2.0's SSIM loss (see the module doc) of two (B, C, H, W) images in [0, 1]; H, W > window_size // 2."""
    x, y = x.float(), y.float()
    channels = x.shape[1]
    pad = window_size // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(f"SSIM's reflect padding of {pad} needs images larger than that, got {tuple(x.shape[-2:])}")
    window = gaussian_window(window_size).to(x.device).expand(channels, 1, window_size, window_size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return (torch.clamp(1.0 - ssim, 0.0, 1.0) / 2.0).mean()


def _sobel(x: torch.Tensor, *, normalized: bool, padding: str) -> torch.Tensor:
    """Signed Sobel derivatives (B, C, 2, H, W), d/dx then d/dy, as cross-correlations (conv2d)."""
    x = x.float()
    b, c, h, w = x.shape
    kx = torch.tensor(SOBEL_X, device=x.device)
    kernels = torch.stack((kx, kx.T))[:, None]  # (2, 1, 3, 3)
    if normalized:
        kernels = kernels / kernels.abs().sum(dim=(-2, -1), keepdim=True)
    flat = x.reshape(b * c, 1, h, w)
    flat = F.pad(flat, (1, 1, 1, 1), mode="replicate") if padding == "replicate" else F.pad(flat, (1, 1, 1, 1))
    return F.conv2d(flat, kernels).view(b, c, 2, h, w)


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """kornia 0.2.0's ``SpatialGradient()``: normalised Sobel, replicate padding -> (B, C, 2, H, W)."""
    return _sobel(x, normalized=True, padding="replicate")


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """CDDFuse's ``Sobelxy``: |Gx| + |Gy| with unnormalised kernels and zero padding -> (B, C, H, W)."""
    return _sobel(x, normalized=False, padding="zeros").abs().sum(dim=2)
