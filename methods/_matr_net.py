"""MATR's network (Tang et al., IEEE TIP 2022; ``Networks/net.py`` and ``layers.py`` of tthinking/MATR @b427644).

    f0 = AdaptiveConvBlock(2 -> 16)(concat(ir, vi))
    s_k = conv^k(f0), k = 1, 2, 3          (one shared AdaptiveConvBlock(16 -> 16), re-applied from f0 each time)
    out = tanh(conv1x1(sum_k conv(Transformer(s_k))))   (the same Transformer and conv for every scale)

An ``AdaptiveConvBlock`` is MATR's ``Basic3x3``: its adaptive 3 x 3 convolution (``layers.Conv2d``), BatchNorm,
ReLU. The adaptive convolution re-weights its 3 x 3 kernel per sample by a sigmoid attention built from the input's
3 x 3 average-pooled summary: a per-input-channel part (``ce`` -> BN -> ReLU -> ``gd``) plus a per-output-channel
part (BN -> ReLU -> grouped linear ``ci`` -> BN -> ReLU -> ``gd2``).

The Transformer is MATR's ``BasicLayer``: depth 3 Swin blocks of dim 16, 8 heads, window size 1, no shift (the
shift is window // 2 = 0), MLP ratio 4. With one token per window the softmax has a single key, so each
attention returns proj(v); q, k and the relative-position bias are kept (and get no gradient), as in MATR.

Kept quirk (architecture): MATR's block calls ``x.view(B, H, W, C)`` on a (B, C, H, W) map, a reshape and not a
permute, so its "tokens" are runs of C = 16 consecutive values of the channel-first memory (16 neighbouring pixels
of one row of one channel when W is a multiple of 16), and the LayerNorm, attention and MLP mix those; the inverse
view restores the layout. ``tokens = x.reshape(B * H * W, C)`` reproduces it for any H, W.

Fixed quirk: MATR's adaptive convolution reshapes its output to sqrt(L) x sqrt(L) (square inputs only); here the
per-sample kernels are applied as a grouped convolution (the same sums as its unfold + matmul) whose output keeps
H x W, so non-square slices work.

Not built: MATR's ``PatchEmbed`` holds a LayerNorm(96) (192 parameters) that its forward never uses; without it the
network has 13,230 parameters against MATR's 13,422.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptiveConv3x3(nn.Module):
    """MATR's ``layers.Conv2d`` with kernel 3, stride 1, padding 1, no bias (see the module doc)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        summary = 3 * 3
        latent = summary // 2 + 1  # MATR's num_lat = int(9 / 2 + 1) = 5
        self.group = 16 if in_channels >= 16 else in_channels
        if in_channels % self.group or out_channels % (in_channels // self.group):
            raise ValueError(f"adaptive conv: {in_channels} -> {out_channels} channels do not split into groups "
                             f"of {self.group}")
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.ce = nn.Linear(summary, latent, bias=False)
        self.ce_bn = nn.BatchNorm1d(in_channels)
        self.ci_bn2 = nn.BatchNorm1d(in_channels)
        self.ci = nn.Linear(self.group, out_channels // (in_channels // self.group), bias=False)
        self.ci_bn = nn.BatchNorm1d(out_channels)
        self.gd = nn.Linear(latent, summary, bias=False)
        self.gd2 = nn.Linear(latent, summary, bias=False)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample kernels (B, out, in, 3, 3): the shared weight times a sigmoid attention."""
        b, c = x.shape[:2]
        latent = self.ce(F.adaptive_avg_pool2d(x, 3).flatten(2))  # (B, C, 5)
        per_in = self.gd(F.relu(self.ce_bn(latent)))  # (B, C, 9)
        groups = F.relu(self.ci_bn2(latent)).view(b, c // self.group, self.group, -1).transpose(2, 3)
        per_out = self.ci(groups).transpose(2, 3).reshape(b, self.out_channels, -1)  # (B, out, 5)
        per_out = self.gd2(F.relu(self.ci_bn(per_out)))  # (B, out, 9)
        attention = torch.sigmoid(per_in.view(b, 1, c, 3, 3) + per_out.view(b, self.out_channels, 1, 3, 3))
        return attention * self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        kernels = self.kernels(x).reshape(b * self.out_channels, c, 3, 3)
        out = F.conv2d(x.reshape(1, b * c, h, w), kernels, padding=1, groups=b)
        return out.view(b, self.out_channels, h, w)


class AdaptiveConvBlock(nn.Sequential):
    """MATR's ``Basic3x3``: adaptive 3 x 3 convolution, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(AdaptiveConv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU())


class TokenAttention(nn.Module):
    """Swin window attention with window size 1: every token is its own window (one query, one key)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias = nn.Parameter(torch.zeros(1, heads))  # (2 * 1 - 1)^2 offsets x heads
        nn.init.trunc_normal_(self.relative_position_bias, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(-3)  # each (T, heads, dim / heads)
        logits = (q * self.scale * k).sum(-1, keepdim=True) + self.relative_position_bias[0, :, None]
        return self.proj((logits.softmax(dim=-1) * v).flatten(-2))


class SwinBlock(nn.Module):
    """Pre-norm block on (T, dim) tokens: x + attn(LN(x)), then x + MLP(LN(x)) (GELU, ratio ``mlp_ratio``)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """MATR's ``BasicLayer`` on a (B, C, H, W) map, with its view-as-BHWC token layout (see the module doc)."""

    def __init__(self, dim: int, heads: int, depth: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(SwinBlock(dim, heads, mlp_ratio) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.blocks(x.reshape(b * h * w, c)).reshape(b, c, h, w)


class MATRNet(nn.Module):
    """(B, 2, H, W) = concat(ir, vi) in [0, 1] -> tanh output (B, 1, H, W) in (-1, 1), any H, W."""

    def __init__(self, channels: int = 16, heads: int = 8, depth: int = 3, mlp_ratio: float = 4.0,
                 scales: int = 3) -> None:
        super().__init__()
        self.scales = scales
        self.input_conv = AdaptiveConvBlock(2, channels)
        self.conv = AdaptiveConvBlock(channels, channels)
        self.transformer = TokenTransformer(channels, heads, depth, mlp_ratio)
        self.output = nn.Conv2d(channels, 1, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.input_conv(x)
        total = 0
        for scale in range(1, self.scales + 1):
            s = f0
            for _ in range(scale):  # re-applied from f0, in MATR's order of calls (its BatchNorm statistics see them)
                s = self.conv(s)
            total = total + self.conv(self.transformer(s))
        return torch.tanh(self.output(total))
