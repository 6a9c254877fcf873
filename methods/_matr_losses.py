"""MATR's losses (``losses/__init__.py`` of tthinking/MATR @b427644): its own SSIM and the RMI loss.

- ``ssim_loss(fused, source)``: 1 - mean SSIM with a normalised Gaussian window (sigma 1.5) of min(11, H, W),
  no padding (valid positions only), C1 = (0.01 L)^2, C2 = (0.03 L)^2. L is guessed from the first argument as
  MATR does: max 255 if it exceeds 128 else 1, min -1 if it goes below -0.5 else 0, L = max - min. MATR passes its
  tanh output first, so L is 2 once an output pixel is below -0.5, else 1.
- ``rmi_loss(logits, target)``: MATR's ``RMILoss`` with its defaults: 0.5 BCE-with-logits(logits, target) +
  0.5 RMI(sigmoid(logits), target). RMI (Zhao et al., NeurIPS 2019) max-pools both maps by 3 (stride 3,
  padding 1), takes every 3 x 3 neighbourhood as a 9-vector, centres the vectors over positions, and with the
  (unnormalised) covariances S_y, S_p, S_yp computes M = S_y - S_yp (S_p + eps I)^-T S_yp^T and
  0.5 log det(M + eps I) / 9 (eps = 5e-4; log det from the Cholesky diagonal, + 1e-8 inside the log), in float64,
  summed over channels and averaged over the batch. MATR feeds its tanh output as the logits.
Inputs are up-cast to float32 (RMI to float64); the recipe calls these outside autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RMI_EPSILON = 5e-4


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_loss(fused: torch.Tensor, source: torch.Tensor, window_size: int = 11) -> torch.Tensor:
    """MATR's ``ssim(fused, source)`` of single-channel (B, 1, H, W) images (see the module doc)."""
    x, y = fused.float(), source.float()
    if x.shape[1] != 1:
        raise ValueError(f"MATR's SSIM is for single-channel images, got {x.shape[1]} channels")
    value_range = (255.0 if x.max() > 128 else 1.0) - (-1.0 if x.min() < -0.5 else 0.0)
    window = _gaussian_window(min(window_size, *x.shape[-2:])).to(x.device)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x.square()
    var_y = F.conv2d(y * y, window) - mu_y.square()
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return 1.0 - ssim.mean()


def _regions(x: torch.Tensor, radius: int, stride: int) -> torch.Tensor:
    """(B, C, radius^2, L) float64: every radius x radius neighbourhood of the max-pooled map, centred over L."""
    x = F.max_pool2d(x, kernel_size=stride, stride=stride, padding=stride // 2)
    if min(x.shape[-2:]) < radius:
        need = radius * stride - 2 * (stride // 2)
        raise ValueError(f"RMI: the {stride}x max-pooled map {tuple(x.shape[-2:])} is smaller than its "
                         f"{radius} x {radius} regions (images need at least {need} pixels a side)")
    vectors = F.unfold(x, kernel_size=radius).view(*x.shape[:2], radius * radius, -1).double()
    return vectors - vectors.mean(dim=3, keepdim=True)


def region_mutual_information(pred: torch.Tensor, target: torch.Tensor, radius: int = 3, stride: int = 3,
                              epsilon: float = RMI_EPSILON) -> torch.Tensor:
    """MATR's ``rmi_loss``: 0.5 log det of the posterior covariance of target regions given pred regions / radius^2."""
    n = radius * radius
    y, p = _regions(target.float(), radius, stride), _regions(pred.float(), radius, stride)
    eye = torch.eye(n, dtype=y.dtype, device=y.device) * epsilon
    y_cov = y @ y.transpose(-2, -1)
    p_cov = p @ p.transpose(-2, -1)
    yp_cov = y @ p.transpose(-2, -1)
    m = y_cov - yp_cov @ torch.linalg.inv(p_cov + eye).transpose(-2, -1) @ yp_cov.transpose(-2, -1)
    diag = torch.diagonal(torch.linalg.cholesky(m + eye), dim1=-2, dim2=-1)
    rmi = 0.5 * (2 * torch.log(diag + 1e-8).sum(dim=-1)) / n  # (B, C)
    return rmi.sum(dim=1).mean(dim=0)


def rmi_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 0.5) -> torch.Tensor:
    """MATR's ``RMI(out, source)``: bce_weight BCE-with-logits + (1 - bce_weight) RMI(sigmoid(logits), target)."""
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    rmi = region_mutual_information(torch.sigmoid(logits), target)
    return bce_weight * bce + (1.0 - bce_weight) * rmi.float()
