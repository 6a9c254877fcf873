"""Fuse4Seg fusion leader (paper Sec. 3.3), built on CDDFuse's encoder / fusion layers / decoder.

Pipeline, for two single-channel sources a, b in [0, 1]:

1. Shared encoder (both sources in one batch): 3 x 3 patch embedding + ``encoder_blocks`` Restormer blocks.
2. Frequency-decoupled branches on each source's shallow features: low = Lite Transformer (MSA + MLP, CDDFuse's
   ``BaseFeatureExtraction``), high = INN of ``inn_nodes`` affine couplings (CDDFuse's ``DetailFeatureExtraction``).
3. Learnable fusion unit (Eq. 6): low_f = LiteTransformer(low_a + low_b), high_f = INN(high_a + high_b)
   (element-wise sums, as CDDFuse's phase II; the fusion INN has ``fusion_inn_nodes`` = 1 node as in CDDFuse).
4. Anchor-free transformer decoder (CDDFuse's ``Restormer_Decoder`` called with ``inp_img=None``, as its MIF
   checkpoint is): concat(low_f, high_f) -> 1 x 1 reduction to ``dim`` -> ``decoder_blocks`` Restormer blocks ->
   3 x 3 conv to dim/2, LeakyReLU, 3 x 3 conv to 1 channel -> sigmoid. No source image is added to the output.
5. Per-image min-max normalisation to [0, 1] (Sec. 3.3.2): F = (y - min y) / max(max y - min y, 1e-6), computed
   in float32 over each image's H x W after cropping any padding. The epsilon only matters for an (almost)
   constant output, which then maps to values near 0 instead of dividing by zero.

Declared choices / simplifications:
- The sigmoid before the min-max step is CDDFuse's decoder output; the min-max step (CDDFuse applies it per test
  image in ``test_MIF.py``) is part of the module here so training sees the same normalised image as inference.
- The paper calls the low-frequency attention "MSA"; CDDFuse's Lite Transformer (followed here) attends over
  channels (transposed attention) with a dense 3 x 3 qkv convolution; see ``benchmark.nn.restormer``.
- INN details (bounded scale, LU channel mix, optional Haar squeeze ``inn_haar``) in ``benchmark.nn.inn``. With
  ``inn_haar=True`` inputs of odd size are reflect-padded to even size and the outputs cropped back; otherwise no
  layer needs divisibility and nothing is padded.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from benchmark.nn.functional import minmax_per_image
from benchmark.nn.inn import INNBlock
from benchmark.nn.restormer import TransformerBlock, lite_transformer, pad_to_multiple


OUTPUT_RANGES = ("minmax", "sigmoid")
PRIOR_EPS = 1e-4  # logit(prior) is bounded by +-9.2, so the correction can still move any pixel


class LeaderOutput(NamedTuple):
    """Fused image (B, 1, H, W) in [0, 1] and each source's low / high-frequency features (B, dim, H, W)."""

    fused: torch.Tensor
    low_a: torch.Tensor
    high_a: torch.Tensor
    low_b: torch.Tensor
    high_b: torch.Tensor


class FusionLeader(nn.Module):
    """Frequency-decoupled fusion network; full-size defaults are CDDFuse's (64 channels, 8 heads, 4 + 4 blocks)."""

    def __init__(
        self,
        in_channels: int = 1,
        dim: int = 64,
        heads: int = 8,
        encoder_blocks: int = 4,
        decoder_blocks: int = 4,
        inn_nodes: int = 3,
        fusion_inn_nodes: int = 1,
        ffn_expansion: float = 2.0,
        bias: bool = False,
        norm_bias: bool = True,
        inn_haar: bool = False,
        output_range: str = "minmax",
        prior_residual: bool = False,
    ) -> None:
        super().__init__()
        if output_range not in OUTPUT_RANGES:
            raise ValueError(f"output_range must be one of {OUTPUT_RANGES}, got {output_range!r}")
        self.output_range = output_range
        self.prior_residual = prior_residual
        self.pad_multiple = 2 if inn_haar else 1

        def restormer_stack(depth: int) -> nn.Sequential:
            return nn.Sequential(
                *(TransformerBlock(dim, heads, ffn_expansion, bias=bias, norm_bias=norm_bias) for _ in range(depth))
            )

        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=bias)
        self.encoder = restormer_stack(encoder_blocks)
        self.low_branch = lite_transformer(dim, heads, norm_bias=norm_bias)
        self.high_branch = INNBlock(dim, num_nodes=inn_nodes, haar=inn_haar)
        self.fuse_low = lite_transformer(dim, heads, norm_bias=norm_bias)
        self.fuse_high = INNBlock(dim, num_nodes=fusion_inn_nodes, haar=inn_haar)
        self.reduce = nn.Conv2d(2 * dim, dim, kernel_size=1, bias=bias)
        self.decoder = restormer_stack(decoder_blocks)
        self.output = nn.Sequential(
            nn.Conv2d(dim, dim // 2, kernel_size=3, padding=1, bias=bias),
            nn.LeakyReLU(),
            nn.Conv2d(dim // 2, 1, kernel_size=3, padding=1, bias=bias),
        )
        if prior_residual:  # the leader starts as the prior exactly and learns a correction of it
            nn.init.zeros_(self.output[-1].weight)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> LeaderOutput:
        batch = a.shape[0]
        x, (h, w) = pad_to_multiple(torch.cat((a, b), dim=0), self.pad_multiple)
        shallow = self.encoder(self.patch_embed(x))
        low, high = self.low_branch(shallow), self.high_branch(shallow)
        low_a, low_b = low.split(batch)
        high_a, high_b = high.split(batch)
        low_f = self.fuse_low(low_a + low_b)
        high_f = self.fuse_high(high_a + high_b)
        z = self.output(self.decoder(self.reduce(torch.cat((low_f, high_f), dim=1))))
        if self.prior_residual:
            prior = 0.5 * (x[:batch] + x[batch:])
            z = z.float() + torch.logit(prior.float(), eps=PRIOR_EPS)
        y = torch.sigmoid(z)

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., :h, :w]

        fused = minmax_per_image(crop(y)) if self.output_range == "minmax" else crop(y).float()
        return LeaderOutput(fused, crop(low_a), crop(high_a), crop(low_b), crop(high_b))
