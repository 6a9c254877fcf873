"""Hybrid CNN-Transformer U-Net: the Fuse4Seg segmentation follower (paper Sec. 3.4) and shared backbone.

Used as the follower on the 1-channel fused image, as the one segmentation network of every disjoint
fusion + segmentation baseline, and (``in_channels=2``) as a multi-channel baseline.

Layout for ``dims = (d0, d1, d2, d3)`` (L = len(dims) - 1 = 3 downsamplings):
- stem: 3 x 3 conv to d0 + channel LayerNorm, at full resolution (a U-Net needs full-resolution skips, so not
  ConvNeXt's 4 x 4 patchify stem);
- encoder: at level i, ``depths[i]`` ConvNeXt blocks (7 x 7 depthwise conv, LayerNorm, 1 x 1 MLP x4 with GELU,
  layer scale, residual), then ConvNeXt's downsampling layer (LayerNorm + 2 x 2 conv, stride 2) to d(i+1);
- bottleneck at 1/2^L resolution: ``depths[L]`` ConvNeXt blocks, a depthwise 3 x 3 conditional positional
  encoding (CPVT's PEG, residual), then ``bottleneck_blocks`` pre-norm transformer blocks with multi-head
  self-attention over the H x W spatial tokens and an MLP x4;
- decoder: at level i = L-1 .. 0, 2 x 2 transposed conv up to d_i, concat with the encoder skip, 1 x 1 conv back
  to d_i, ``depths[i]`` ConvNeXt blocks (symmetric with the encoder);
- head: 1 x 1 conv to ``num_classes`` logits.

Any H, W: the input is padded (reflect, see ``pad_to_multiple``) to a multiple of 2^L and the logits cropped back.

Declared simplifications vs ConvNeXt: no stochastic depth (drop path) and PyTorch's default initialisation
(ConvNeXt uses truncated-normal 0.02); the paper gives no depths or widths, the defaults here are our choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .restormer import LayerNorm2d, pad_to_multiple

CONVNEXT_LN_EPS = 1e-6


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al., CVPR 2022): dw 7 x 7 -> LN -> 1 x 1 (4x) -> GELU -> 1 x 1 -> layer scale, residual.

    The pointwise layers are 1 x 1 convolutions on the (B, C, H, W) map, equivalent to ConvNeXt's channels-last
    ``nn.Linear`` pair.
    """

    def __init__(self, dim: int, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=CONVNEXT_LN_EPS)
        self.pwconv1 = nn.Conv2d(dim, 4 * dim, kernel_size=1)
        self.pwconv2 = nn.Conv2d(4 * dim, dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(self.dwconv(x)))))
        return x + self.gamma * y


def convnext_stage(dim: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))


class SpatialSelfAttention(nn.Module):
    """Standard multi-head self-attention over the H x W pixels of a (B, C, H, W) map (scaled dot product)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each (B, heads, H*W, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ConditionalPositionEncoding(nn.Module):
    """CPVT's positional encoding generator: x + depthwise 3 x 3 conv(x), position from zero-padded borders."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)

class BottleneckTransformerBlock(nn.Module):
    """Pre-norm ViT block on a feature map: x + MSA(LN(x)), then x + MLP(LN(x)) with GELU, expansion 4."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=CONVNEXT_LN_EPS)
        self.attn = SpatialSelfAttention(dim, heads)
        self.norm2 = LayerNorm2d(dim, eps=CONVNEXT_LN_EPS)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SegmentationFollower(nn.Module):
    """U-shaped ConvNeXt encoder-decoder with a self-attention bottleneck; returns (B, num_classes, H, W) logits."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        bottleneck_heads: int = 4,
        bottleneck_blocks: int = 1,
    ) -> None:
        super().__init__()
        dims, depths = tuple(dims), tuple(depths)
        if len(dims) < 2 or len(depths) != len(dims):
            raise ValueError(f"need >= 2 levels and one depth per level, got dims={dims}, depths={depths}")
        levels = len(dims) - 1
        self.pad_multiple = 2**levels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=3, padding=1), LayerNorm2d(dims[0], eps=CONVNEXT_LN_EPS)
        )
        self.encoder = nn.ModuleList(convnext_stage(dims[i], depths[i]) for i in range(levels))
        self.downsample = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i], eps=CONVNEXT_LN_EPS), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2))
            for i in range(levels)
        )
        self.bottleneck = nn.Sequential(
            convnext_stage(dims[-1], depths[-1]),
            ConditionalPositionEncoding(dims[-1]),
            *(BottleneckTransformerBlock(dims[-1], bottleneck_heads) for _ in range(bottleneck_blocks)),
        )
        self.upsample = nn.ModuleList(nn.ConvTranspose2d(dims[i + 1], dims[i], 2, stride=2) for i in range(levels))
        self.merge = nn.ModuleList(nn.Conv2d(2 * dims[i], dims[i], kernel_size=1) for i in range(levels))
        self.decoder = nn.ModuleList(convnext_stage(dims[i], depths[i]) for i in range(levels))
        self.head = nn.Conv2d(dims[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.pad_multiple)
        x = self.stem(x)
        skips = []
        for stage, down in zip(self.encoder, self.downsample):
            x = stage(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for i in reversed(range(len(skips))):
            x = self.upsample[i](x)
            x = self.decoder[i](self.merge[i](torch.cat((x, skips[i]), dim=1)))
        return self.head(x)[..., :h, :w]

