"""CDDFuse's network (Zhao et al., CVPR 2023; ``net.py`` of MMIF-CDDFuse @fd8da1f), at any width.

- Encoder (``Restormer_Encoder``): 3 x 3 patch embedding 1 -> dim, ``encoder_blocks`` Restormer blocks, then two
  branches on the shallow features: base = Lite Transformer, detail = INN of ``detail_nodes`` couplings.
- Fusion layers (phase II): base_F = LiteTransformer(B_a + B_b), detail_F = INN of ``fusion_detail_nodes`` (1)
  couplings on D_a + D_b.
- Decoder (``Restormer_Decoder``): concat(base, detail) -> 1 x 1 to dim -> ``decoder_blocks`` Restormer blocks ->
  3 x 3 conv to dim/2, LeakyReLU, 3 x 3 conv to 1 -> sigmoid. No image residual: CDDFuse's MIF checkpoint
  decodes with ``inp_img=None``.

The Restormer blocks and the Lite Transformer's attention are the shared ones (``benchmark.nn.restormer``, equal to
CDDFuse's). Two blocks are written here in CDDFuse's exact form because the shared ones differ:
- ``DetailNode``: CDDFuse's plain 1 x 1 convolution with bias mixes the channels ("shffleconv") and the scale is
  an unbounded exp (``benchmark.nn.inn`` uses an invertible LU-parametrised mix and a tanh-bounded scale; the
  unbounded exp is safe under bfloat16 autocast, the default, but could overflow under float16);
- ``LiteTransformer``: its gated MLP groups the 3 x 3 convolution's channels in pairs (``groups = hidden``), where
  the shared ``lite_transformer`` is fully depthwise.
At full size (dim 64, 8 heads, 4 + 4 blocks, 3 + 1 nodes) this is 1,188,272 parameters, CDDFuse's count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from benchmark.nn.inn import InvertedResidualBlock
from benchmark.nn.restormer import GatedDconvFFN, TransformerBlock


class PairGroupedFFN(GatedDconvFFN):
    """CDDFuse's ``Mlp`` (expansion 1): the GDFN with its 3 x 3 convolution over channel pairs, not depthwise."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, expansion=1.0, bias=False)
        self.dwconv = nn.Conv2d(2 * dim, 2 * dim, kernel_size=3, padding=1, groups=dim, bias=False)


class LiteTransformer(TransformerBlock):
    """CDDFuse's ``BaseFeatureExtraction``: channel attention with a dense 3 x 3 qkv conv, then ``PairGroupedFFN``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads, ffn_expansion=1.0, bias=False, norm_bias=True, dense_qkv=True)
        self.ffn = PairGroupedFFN(dim)


class DetailNode(nn.Module):
    """One of CDDFuse's INN nodes: z1, z2 = split(conv1x1(x)); z2 += phi(z1); z1 = z1 * exp(rho(z2)) + eta(z2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"the detail branch splits the channels in halves; dim={dim} is odd")
        half = dim // 2
        self.phi = InvertedResidualBlock(half, expand_ratio=2.0)
        self.rho = InvertedResidualBlock(half, expand_ratio=2.0)
        self.eta = InvertedResidualBlock(half, expand_ratio=2.0)
        self.mix = nn.Conv2d(dim, dim, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.mix(x).chunk(2, dim=1)
        z2 = z2 + self.phi(z1)
        z1 = z1 * torch.exp(self.rho(z2)) + self.eta(z2)
        return torch.cat((z1, z2), dim=1)


def detail_branch(dim: int, nodes: int) -> nn.Sequential:
    """CDDFuse's ``DetailFeatureExtraction``: ``nodes`` detail nodes in sequence."""
    return nn.Sequential(*(DetailNode(dim) for _ in range(nodes)))


def restormer_stack(dim: int, heads: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, 2.0, bias=False, norm_bias=True) for _ in range(depth)))


class Encoder(nn.Module):
    """Shared encoder: (B, 1, H, W) -> base and detail features, each (B, dim, H, W)."""

    def __init__(self, dim: int, heads: int, blocks: int, detail_nodes: int) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=3, padding=1, bias=False)
        self.blocks = restormer_stack(dim, heads, blocks)
        self.base = LiteTransformer(dim, heads)
        self.detail = detail_branch(dim, detail_nodes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shallow = self.blocks(self.patch_embed(x))
        return self.base(shallow), self.detail(shallow)


class Decoder(nn.Module):
    """Base and detail features -> image in (0, 1) (sigmoid), without CDDFuse's optional image residual."""

    def __init__(self, dim: int, heads: int, blocks: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(2 * dim, dim, kernel_size=1, bias=False)
        self.blocks = restormer_stack(dim, heads, blocks)
        self.output = nn.Sequential(
            nn.Conv2d(dim, dim // 2, kernel_size=3, padding=1, bias=False),
            nn.LeakyReLU(),
            nn.Conv2d(dim // 2, 1, kernel_size=3, padding=1, bias=False),
        )

    def forward(self, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.output(self.blocks(self.reduce(torch.cat((base, detail), dim=1)))))


class Features(NamedTuple):
    """Encoder features of both sources, each (B, dim, H, W): what the decomposition loss correlates."""

    base_a: torch.Tensor
    detail_a: torch.Tensor
    base_b: torch.Tensor
    detail_b: torch.Tensor


class CDDFuseNet(nn.Module):
    """The four sub-networks CDDFuse trains (and clips) separately: encoder, base and detail fusion layers, decoder.

    ``reconstruct(a, b)`` (phase I) decodes each source from its own features; ``forward(a, b)`` (phase II and
    inference) decodes the fused features. Both sources go through the encoder (and in phase I the decoder) as one
    batch: nothing uses batch statistics, so this equals separate calls. Images are the decoder's sigmoid output,
    before any min-max step.
    """

    def __init__(self, dim: int = 64, heads: int = 8, encoder_blocks: int = 4, decoder_blocks: int = 4,
                 detail_nodes: int = 3, fusion_detail_nodes: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.encoder = Encoder(dim, heads, encoder_blocks, detail_nodes)
        self.fuse_base = LiteTransformer(dim, heads)
        self.fuse_detail = detail_branch(dim, fusion_detail_nodes)
        self.decoder = Decoder(dim, heads, decoder_blocks)

    def encode(self, a: torch.Tensor, b: torch.Tensor) -> Features:
        base, detail = self.encoder(torch.cat((a, b), dim=0))
        base_a, base_b = base.split(a.shape[0])
        detail_a, detail_b = detail.split(a.shape[0])
        return Features(base_a, detail_a, base_b, detail_b)

    def reconstruct(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Features]:
        """(a_hat, b_hat, features): each source decoded from its own base and detail features (phase I)."""
        f = self.encode(a, b)
        images = self.decoder(torch.cat((f.base_a, f.base_b)), torch.cat((f.detail_a, f.detail_b)))
        a_hat, b_hat = images.split(a.shape[0])
        return a_hat, b_hat, f

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, Features]:
        """(fused, features): the decoded fusion of both sources' features (phase II and inference)."""
        f = self.encode(a, b)
        return self.decoder(self.fuse_base(f.base_a + f.base_b), self.fuse_detail(f.detail_a + f.detail_b)), f
