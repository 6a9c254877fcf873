"""Restormer building blocks (Zamir et al., CVPR 2022) as CDDFuse uses them, plus small 2-D helpers.

Faithful to CDDFuse's ``net.py``: channel LayerNorm for (B, C, H, W) maps with or without bias (``WithBias`` /
``BiasFree``), Multi-Dconv-head Transposed Attention (MDTA: attention over channels, not pixels, so its cost is
linear in H x W; q and k are L2-normalised along the pixels and scaled by a learnable per-head temperature), the
Gated-Dconv Feed-forward Network (GDFN) and the pre-norm ``TransformerBlock``. The same block with a dense 3 x 3
qkv convolution and an MLP expansion of 1 is CDDFuse's "Lite Transformer" (``BaseFeatureExtraction``).

Declared simplifications / choices:
- The Lite Transformer's gated MLP uses a fully depthwise 3 x 3 convolution; CDDFuse's ``Mlp`` groups the
  channels in pairs (``groups=hidden``) - a few hundred weights of difference, same receptive field.
- Normalisation and the attention core run in float32 even under autocast: the pixel-wise L2 norm of q and k
  sums H x W squares and overflows float16 at the image sizes used here.
- Every layer is size-agnostic (3 x 3 convolutions with padding 1), so any H, W works, odd included.

``LayerNorm2d`` and ``pad_to_multiple`` are shared with the ConvNeXt follower (``benchmark.nn.convnext_unet``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functional import float32_region


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (every pixel normalised on its own).

    ``bias=True`` is Restormer's ``WithBias`` form (and ConvNeXt's ``channels_first`` LayerNorm);
    ``bias=False`` is ``BiasFree``: the input is divided by its channel standard deviation but not centred.
    Statistics are computed in float32 so the block is AMP-safe.
    """

    def __init__(self, channels: int, bias: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        if self.bias is not None:  # fused kernel on the channels-last view
            out = F.layer_norm(x32.permute(0, 2, 3, 1), x.shape[1:2], self.weight.float(), self.bias.float(), self.eps)
            return out.permute(0, 3, 1, 2).to(x.dtype)
        var = torch.var(x32, dim=1, keepdim=True, correction=0)
        return (x32 * torch.rsqrt(var + self.eps) * self.weight.float()[:, None, None]).to(x.dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the bottom/right of a (B, C, H, W) map so that H and W are multiples of ``multiple``.

    Reflect padding (no artificial edges) where the map is large enough, replicate otherwise (reflect needs
    pad < size). Returns the padded map and the original (H, W) to crop back with ``x[..., :h, :w]``.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (h, w)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (h, w)


class ChannelAttention(nn.Module):
    """Transposed (channel) multi-head self-attention: MDTA of Restormer, or CDDFuse's Lite-Transformer attention.

    qkv come from a 1 x 1 convolution followed by a 3 x 3 convolution (depthwise for MDTA, dense for the Lite
    Transformer's ``AttentionBase``). Each head attends over its C/heads channels: attention map (C/h x C/h).
    """

    def __init__(self, dim: int, heads: int, bias: bool = False, dense_qkv: bool = False) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_conv = nn.Conv2d(
            dim * 3, dim * 3, kernel_size=3, padding=1, groups=1 if dense_qkv else dim * 3, bias=bias
        )
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_conv(self.qkv(x))
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        with float32_region(x):
            q = F.normalize(q.float(), dim=-1)
            k = F.normalize(k.float(), dim=-1)
            attn = (q @ k.transpose(-2, -1)) * self.temperature.float()
            out = attn.softmax(dim=-1) @ v.float()
        return self.project_out(out.to(qkv.dtype).reshape(b, c, h, w))


class GatedDconvFFN(nn.Module):
    """GDFN: 1 x 1 expansion to 2 x hidden, depthwise 3 x 3, GELU(x1) * x2 gate, 1 x 1 projection back."""

    def __init__(self, dim: int, expansion: float = 2.0, bias: bool = False) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Pre-norm Restormer block: x + attn(LN(x)), then x + GDFN(LN(x)).

    ``dense_qkv=False`` with ``ffn_expansion=2`` is Restormer's block (CDDFuse encoder / decoder);
    ``dense_qkv=True`` with ``ffn_expansion=1`` is CDDFuse's Lite Transformer (see ``lite_transformer``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_expansion: float = 2.0,
        bias: bool = False,
        norm_bias: bool = True,
        dense_qkv: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim, bias=norm_bias)
        self.attn = ChannelAttention(dim, heads, bias=bias, dense_qkv=dense_qkv)
        self.norm2 = LayerNorm2d(dim, bias=norm_bias)
        self.ffn = GatedDconvFFN(dim, ffn_expansion, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def lite_transformer(dim: int, heads: int, norm_bias: bool = True) -> TransformerBlock:
    """CDDFuse's ``BaseFeatureExtraction`` (low-frequency extractor): dense-qkv attention + MLP of expansion 1."""
    return TransformerBlock(dim, heads, ffn_expansion=1.0, bias=False, norm_bias=norm_bias, dense_qkv=True)
