"""DDFM's sampler (MMIF-DDFM @589f5cb, ``guided_diffusion/gaussian_diffusion.py`` and ``EM_onestep.py``).

DDIM with eta 0 on the prior's 1000-step linear schedule, respaced to ``steps`` timesteps as guided-diffusion's
``space_timesteps`` does (``round(i * 999 / (steps - 1))``: 0, 10, 20, ..., 999 for 100; uneven strides). At every
step the prior's x0 estimate (clamped to [-1, 1]) goes through one EM step of DDFM's hierarchical Bayesian fusion
model against the sources I and V in [-1, 1] and is re-injected: the noise is recomputed from the edited x0 and
x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps.

The DDIM update is written out because diffusers' ``DDIMScheduler.step`` steps to ``t - 1000 // steps``, which is
not the previous timestep of this uneven grid; on an even grid both agree (``tests/test_ddfm.py``).

EM step (``EM_onestep``), with Y = I - V and X = x0 - V: E-step weights C = sqrt(2 / tau_a) / |I - x0|,
D = min(sqrt(2 / tau_b / (X^2 + 1e-6)), 2C), tau updated by their means; M-step: H = TV proximal map of Y - X
(FFT, periodic), F1 / F2 = rho / (2 lambda + rho) times the horizontal / vertical differences of H,
X = (2 C Y + rho (Y - H)) / (2C + 2D + rho); the fused estimate is I - X. F1, F2, tau_a, tau_b carry over from
step to step (initial 0, 0, 1, 1). The official code averages tau over its batch of one image; we average per
image, so that slices fused together do not interact.

Luminance round trip: the official code edits only the Y of x0 (skimage ``rgb2ycbcr(x0) / 255``) and maps back
with ``ycbcr2rgb(255 *)``; on a grey x0 (R = G = B, chroma neutral) this is the affine pair
Y = (16 + 219 g) / 255 and g = (255 Y - 16) / 219, which we keep, so the EM sees the same values as in DDFM.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def respaced_timesteps(train_steps: int, steps: int) -> list[int]:
    """guided-diffusion's ``space_timesteps(train_steps, steps)`` (one section), ascending."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"DDFM: sampling steps must be in [1, {train_steps}], got {steps}")
    stride = (train_steps - 1) / (steps - 1) if steps > 1 else 1
    return [round(i * stride) for i in range(steps)]


def ddim_step(x_t: torch.Tensor, x0: torch.Tensor, abar: float, abar_prev: float) -> torch.Tensor:
    """Deterministic DDIM step (eta 0) to the previous timestep with the noise implied by an edited x0."""
    eps = (x_t / abar ** 0.5 - x0) / (1 / abar - 1) ** 0.5
    return abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps


def to_luma(g: torch.Tensor) -> torch.Tensor:
    """skimage's ``rgb2ycbcr(.) / 255`` of a grey image: its Y channel."""
    return (16 + 219 * g) / 255


def from_luma(y: torch.Tensor) -> torch.Tensor:
    """skimage's ``ycbcr2rgb(255 .)`` of a neutral-chroma image: its grey value."""
    return (255 * y - 16) / 219


def difference_otfs(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Optical transfer functions (MATLAB ``psf2otf``) of the kernels [1, -1] and [1, -1]^T at ``(height, width)``."""
    k1 = torch.zeros(height, width, device=device)
    k1[0, 0], k1[0, -1] = -1.0, 1.0  # [1, -1] placed at the origin and rolled left by its half width
    k2 = torch.zeros(height, width, device=device)
    k2[0, 0], k2[-1, 0] = -1.0, 1.0
    return torch.fft.fft2(k1), torch.fft.fft2(k2)


def _next_difference(h: torch.Tensor, dim: int) -> torch.Tensor:
    """h[k] - h[k + 1] along ``dim`` (-1 or -2), the last entry kept as h[-1] (the official boundary rule)."""
    if dim == -1:
        return h - F.pad(h[..., 1:], (0, 1))
    return h - F.pad(h[..., 1:, :], (0, 0, 0, 1))


class EMState(NamedTuple):
    f1: torch.Tensor
    f2: torch.Tensor
    tau_a: torch.Tensor
    tau_b: torch.Tensor

    @classmethod
    def initial(cls, like: torch.Tensor) -> "EMState":
        ones = torch.ones(like.shape[0], 1, 1, 1, device=like.device, dtype=like.dtype)
        return cls(torch.zeros_like(like), torch.zeros_like(like), ones, ones)


def em_step(f_pre: torch.Tensor, i: torch.Tensor, v: torch.Tensor, state: EMState,
            otfs: tuple[torch.Tensor, torch.Tensor], lamb: float, rho: float) -> tuple[torch.Tensor, EMState]:
    """One EM step of DDFM's fusion model: the fused estimate from the prior's ``f_pre`` and the next state."""
    y = i - v
    x = f_pre - v
    d = torch.sqrt(2 / state.tau_b / (x ** 2 + 1e-6))
    c = torch.sqrt(2 / state.tau_a / ((y - x + 1e-6) ** 2))
    d = torch.minimum(d, 2 * c)
    tau_b = (1 / (d + 1e-10) + state.tau_b / 2).mean(dim=(1, 2, 3), keepdim=True)
    tau_a = (1 / (c + 1e-10) + state.tau_a / 2).mean(dim=(1, 2, 3), keepdim=True)
    k1, k2 = otfs
    spectrum = torch.fft.fft2(y - x) + k1.conj() * torch.fft.fft2(state.f1) + k2.conj() * torch.fft.fft2(state.f2)
    h = torch.fft.ifft2(spectrum / (1 + k1.abs() ** 2 + k2.abs() ** 2)).real
    shrink = rho / (2 * lamb + rho)
    f1, f2 = shrink * _next_difference(h, -1), shrink * _next_difference(h, -2)
    x = (2 * c * y + rho * (y - h)) / (2 * c + 2 * d + rho)
    return i - x, EMState(f1, f2, tau_a, tau_b)


@torch.no_grad()
def ddfm_sample(prior: torch.nn.Module, alphas_cumprod: torch.Tensor, i: torch.Tensor, v: torch.Tensor,
                noise: torch.Tensor, steps: int, lamb: float, rho: float) -> torch.Tensor:
    """DDFM's sampling loop: sources ``i``, ``v`` (B, 1, H, W) in [-1, 1], start ``noise``; returns the last x0
    (grey, before DDFM's min-max normalisation). ``prior(x, t)`` predicts the noise; ``alphas_cumprod`` is its
    training schedule."""
    abar = alphas_cumprod.double().tolist()
    grid = respaced_timesteps(len(abar), steps)
    otfs = difference_otfs(*i.shape[-2:], i.device)
    state = EMState.initial(i)
    x = noise
    for k in reversed(range(len(grid))):
        t = grid[k]
        abar_t, abar_prev = abar[t], abar[grid[k - 1]] if k > 0 else 1.0
        eps = prior(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x0 = ((x - (1 - abar_t) ** 0.5 * eps) / abar_t ** 0.5).clamp(-1, 1)
        fused, state = em_step(to_luma(x0), i, v, state, otfs, lamb, rho)
        x = ddim_step(x, from_luma(fused), abar_t, abar_prev)
    return x
