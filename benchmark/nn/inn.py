"""Invertible high-frequency extractor (paper Sec. 3.3.1, Eq. 5; CDDFuse's ``DetailFeatureExtraction``).

One coupling layer ("node") mixes the channels with an invertible 1 x 1 convolution, splits them into halves
z1, z2 and applies Eq. 5 in CDDFuse's form:

    z2' = z2 + phi(z1)
    z1' = z1 * exp(s(z2')) + eta(z2'),     s = c * tanh(rho / c)
    out = concat(z1', z2')

phi, rho, eta are CDDFuse's inverted residual blocks (1 x 1 expansion, ReLU6, reflect-padded depthwise 3 x 3,
ReLU6, 1 x 1 projection; no skip, no normalisation). Because s, eta are evaluated on z2' and phi on z1, each
node is exactly invertible: z1 = (z1' - eta(z2')) * exp(-s(z2')), z2 = z2' - phi(z1).

Declared deviations from CDDFuse:
- Bounded scale: CDDFuse uses exp(rho) unbounded; we soft-clamp the log-scale with c * tanh(rho / c), c = 2
  (identical to rho near 0, at most e^2 per node), so a node cannot overflow under float16 autocast and its
  inverse stays well conditioned.
- The channel mix before each split (CDDFuse's ``shffleconv``, a plain 1 x 1 convolution with bias) is a Glow-style
  LU-parametrised 1 x 1 convolution: the same kind of layer, but invertible by construction.
- Optional Haar squeeze (``haar=True``): the paper's text says the INN block "utilizes Haar wavelet
  transformations to squeeze spatial dimensions" although CDDFuse's code has none. With ``haar=True`` the block
  applies an orthonormal 2 x 2 Haar transform (C, H, W) -> (4C, H/2, W/2) before the nodes and its inverse after
  them (H, W must be even). The default ``haar=False`` follows CDDFuse's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InvertedResidualBlock(nn.Module):
    """CDDFuse's phi / rho / eta sub-network (MobileNetV2 bottleneck without batch norm and without skip)."""

    def __init__(self, channels: int, expand_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(channels * expand_ratio)
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU6(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(hidden, hidden, kernel_size=3, groups=hidden, bias=False),
            nn.ReLU6(),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class InvertibleConv1x1(nn.Module):
    """Learned 1 x 1 channel mix W = P L U (Glow, Kingma & Dhariwal 2018) plus bias.

    P is a fixed permutation, L unit lower-triangular, U upper-triangular with diagonal sign * exp(log_s), so W is
    never singular. Initialised from a random orthogonal matrix.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diag.abs().log())
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight()[:, :, None, None], self.bias)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = torch.linalg.inv(self.weight())
        return F.conv2d(y - self.bias[:, None, None], w_inv[:, :, None, None])


class AffineCoupling(nn.Module):
    """One INN node of Eq. 5 (see the module docstring): channel mix, additive then affine coupling."""

    def __init__(self, channels: int, expand_ratio: float = 2.0, scale_clamp: float = 2.0) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling needs an even channel count, got {channels}")
        half = channels // 2
        self.scale_clamp = scale_clamp
        self.mix = InvertibleConv1x1(channels)
        self.phi = InvertedResidualBlock(half, expand_ratio)
        self.rho = InvertedResidualBlock(half, expand_ratio)
        self.eta = InvertedResidualBlock(half, expand_ratio)

    def _log_scale(self, z2: torch.Tensor) -> torch.Tensor:
        return self.scale_clamp * torch.tanh(self.rho(z2) / self.scale_clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.mix(x).chunk(2, dim=1)
        z2 = z2 + self.phi(z1)
        z1 = z1 * torch.exp(self._log_scale(z2)) + self.eta(z2)
        return torch.cat((z1, z2), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        z1, z2 = y.chunk(2, dim=1)
        z1 = (z1 - self.eta(z2)) * torch.exp(-self._log_scale(z2))
        z2 = z2 - self.phi(z1)
        return self.mix.inverse(torch.cat((z1, z2), dim=1))


class HaarSqueeze(nn.Module):
    """Orthonormal 2 x 2 Haar analysis (C, H, W) -> (4C, H/2, W/2); channel blocks ordered LL, LH, HL, HH."""

    def __init__(self) -> None:
        super().__init__()
        haar = torch.tensor(
            [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0]]
        )
        self.register_buffer("haar", haar / 2.0, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Haar squeeze needs even H, W, got {h} x {w}")
        # pixel_unshuffle gives channel index c * 4 + (2 * row + col) over each 2 x 2 neighbourhood
        sub = F.pixel_unshuffle(x, 2).reshape(b, c, 4, h // 2, w // 2)
        bands = torch.einsum("ij,bcjhw->bichw", self.haar.to(x.dtype), sub)
        return bands.reshape(b, 4 * c, h // 2, w // 2)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b, c4, h2, w2 = y.shape
        bands = y.reshape(b, 4, c4 // 4, h2, w2)
        sub = torch.einsum("ji,bjchw->bcihw", self.haar.to(y.dtype), bands)
        return F.pixel_shuffle(sub.reshape(b, c4, h2, w2), 2)


class INNBlock(nn.Module):
    """Stack of ``num_nodes`` affine coupling nodes on ``channels`` channels (optionally inside a Haar squeeze)."""

    def __init__(
        self,
        channels: int,
        num_nodes: int = 3,
        expand_ratio: float = 2.0,
        scale_clamp: float = 2.0,
        haar: bool = False,
    ) -> None:
        super().__init__()
        self.squeeze = HaarSqueeze() if haar else None
        inner = channels * 4 if haar else channels
        self.nodes = nn.ModuleList(AffineCoupling(inner, expand_ratio, scale_clamp) for _ in range(num_nodes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.squeeze is not None:
            x = self.squeeze(x)
        for node in self.nodes:
            x = node(x)
        return self.squeeze.inverse(x) if self.squeeze is not None else x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.squeeze is not None:
            y = self.squeeze(y)
        for node in reversed(self.nodes):
            y = node.inverse(y)
        return self.squeeze.inverse(y) if self.squeeze is not None else y
