"""TFS-Diff's denoiser and our pseudo-target (XylonXu01/TFS-Diff @e53cf07, ``model/sr3_modules``).

``SR3UNet``: SR3's conditional UNet as TFS-Diff configures it (``config/fusion_medical_sr3_16_128.json``): a
squeeze-excitation block (reduction 4, TFS-Diff's "channel attention") on the concatenated input [conditions,
noisy image]; a 3 x 3 stem to ``inner`` channels; per level ``res_blocks`` ResBlocks (GroupNorm - SiLU - conv,
the noise embedding added after the first conv, dropout before the second) with single-head self-attention at
the levels in ``attention_levels``, a strided 3 x 3 conv down between levels; a middle ResBlock with attention and
one without; the decoder mirrors it with ``res_blocks + 1`` ResBlocks per level on the concatenated skips,
nearest x2 + 3 x 3 conv up; GroupNorm - SiLU - 3 x 3 conv to the output. The noise level is SR3's continuous
sqrt(alpha_bar), embedded sinusoidally (WaveGrad) and by an MLP inner -> 4 inner -> inner.

The reference attends at resolution 16 of a nominal 128 x 128 image (``attn_res``), i.e. at the fourth level;
``attention_levels`` names the level, so that the network is the same at every input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class NoiseLevelEncoding(nn.Module):
    """Sinusoidal features of a continuous noise level (B,) -> (B, dim): sin / cos of level * 1e4^(-k / (dim/2))."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        count = self.dim // 2
        freq = torch.exp(-math.log(1e4) * torch.arange(count, device=level.device, dtype=level.dtype) / count)
        angle = level[:, None] * freq[None]
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


def _norm_act_conv(dim: int, dim_out: int, groups: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, dim), nn.SiLU(), nn.Dropout(dropout) if dropout else nn.Identity(),
                         nn.Conv2d(dim, dim_out, 3, padding=1))


class ResBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float, attention: bool):
        super().__init__()
        self.block1 = _norm_act_conv(dim, dim_out, groups)
        self.noise = nn.Linear(emb_dim, dim_out)
        self.block2 = _norm_act_conv(dim_out, dim_out, groups, dropout)
        self.skip = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()
        self.attention = SelfAttention(dim_out, groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.noise(emb)[:, :, None, None]
        x = self.block2(h) + self.skip(x)
        return x if self.attention is None else self.attention(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions (scale 1 / sqrt(channels)), residual."""

    def __init__(self, dim: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, HW, C), default scale 1 / sqrt(C)
        return self.out(y.transpose(-1, -2).reshape(b, c, h, w)) + x


class SqueezeExcitation(nn.Module):
    """Channel gates sigmoid(W2 relu(W1 avgpool(x))) times x; at least one hidden unit."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        hidden = max(1, channels // ratio)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(),
                                  nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


class SR3UNet(nn.Module):
    """``forward(x, level)``: x = [conditions, noisy image] (B, in_channels, H, W), level = sqrt(alpha_bar) (B,)
    -> predicted noise (B, out_channels, H, W). H and W must be multiples of 2 ** (levels - 1)."""

    def __init__(self, in_channels: int, out_channels: int, inner: int = 64, mults=(1, 2, 4, 8, 8),
                 res_blocks: int = 2, attention_levels=(3,), dropout: float = 0.2, norm_groups: int = 32,
                 se_ratio: int = 4):
        super().__init__()
        self.levels = len(mults)
        self.se = SqueezeExcitation(in_channels, se_ratio)
        self.noise_mlp = nn.Sequential(NoiseLevelEncoding(inner), nn.Linear(inner, inner * 4), nn.SiLU(),
                                       nn.Linear(inner * 4, inner))
        block = dict(emb_dim=inner, groups=norm_groups, dropout=dropout)
        self.stem = nn.Conv2d(in_channels, inner, 3, padding=1)
        skips, pre = [inner], inner
        self.down = nn.ModuleList()
        for level, mult in enumerate(mults):
            for _ in range(res_blocks):
                self.down.append(ResBlock(pre, inner * mult, attention=level in attention_levels, **block))
                pre = inner * mult
                skips.append(pre)
            if level < self.levels - 1:
                self.down.append(nn.Conv2d(pre, pre, 3, stride=2, padding=1))
                skips.append(pre)
        self.mid = nn.ModuleList([ResBlock(pre, pre, attention=True, **block),
                                  ResBlock(pre, pre, attention=False, **block)])
        self.up = nn.ModuleList()
        for level in reversed(range(self.levels)):
            for _ in range(res_blocks + 1):
                self.up.append(ResBlock(pre + skips.pop(), inner * mults[level],
                                        attention=level in attention_levels, **block))
                pre = inner * mults[level]
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(pre, pre, 3, padding=1)))
        self.head = _norm_act_conv(pre, out_channels, norm_groups)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        emb = self.noise_mlp(level)
        x = self.stem(self.se(x))
        feats = [x]
        for layer in self.down:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
            feats.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.up:
            x = layer(torch.cat([x, feats.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(x)
        return self.head(x)


_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _blur5(x: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap binomial low-pass (Burt & Adelson), replicate borders."""
    k = torch.tensor(_BINOMIAL, device=x.device, dtype=x.dtype) / 16
    c = x.shape[1]
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    return F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def laplacian_pyramid_fusion(a: torch.Tensor, b: torch.Tensor, levels: int) -> torch.Tensor:
    """Classical Laplacian-pyramid fusion (Burt & Kolczynski): at each of ``levels`` detail levels the coefficient
    of larger magnitude, the mean of the two coarsest approximations; (B, 1, H, W) in [0, 1] -> same, clamped."""
    details = []
    for _ in range(levels):
        if min(a.shape[-2:]) < 2:
            break
        a_low, b_low = _blur5(a)[..., ::2, ::2], _blur5(b)[..., ::2, ::2]
        la, lb = a - _upsample(a_low, a.shape[-2:]), b - _upsample(b_low, b.shape[-2:])
        details.append(torch.where(la.abs() >= lb.abs(), la, lb))
        a, b = a_low, b_low
    fused = 0.5 * (a + b)
    for detail in reversed(details):
        fused = _upsample(fused, detail.shape[-2:]) + detail
    return fused.clamp(0, 1)
