"""PVTv2 encoder of CENet, written from whai362/PVT (``classification/pvt_v2.py``) as CENet's ``pvtv2.py`` uses it.

Four stages of overlapping patch embeddings (7 x 7 stride 4, then 3 x 3 stride 2; conv + LayerNorm) and
transformer blocks with spatial-reduction attention (keys and values from a ``sr_ratio``-strided conv + LayerNorm)
and a Mix-FFN (linear, 3 x 3 depthwise conv, GELU, linear); a LayerNorm ends each stage. pvt_v2_b2: dims 64, 128,
320, 512, depths 3, 4, 6, 3, heads 1, 2, 5, 8, sr ratios 8, 4, 2, 1, MLP ratios 8, 8, 4, 4, qkv bias, block norms
eps 1e-6, stochastic depth up to 0.1. Module names are the official ones, so ``load_pvt_v2`` reads the ImageNet
``pvt_v2_b2.pth`` state dict key for key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.init import init_vit_weights


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's residual branch with probability ``p`` (kept ones scaled by 1/(1-p))."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: int, cin: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class Attention(nn.Module):
    """Spatial-reduction attention: queries at every token, keys/values from the ``sr``-strided map."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"PVTv2: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class PVTv2(nn.Module):
    """(B, in_channels, H, W) -> four maps at strides 4, 8, 16, 32 with ``dims`` channels."""

    def __init__(self, in_channels: int, dims: list[int], depths: list[int], heads: list[int],
                 sr_ratios: list[int], mlp_ratios: list[int], drop_path: float):
        super().__init__()
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2,
                                                                   in_channels if i == 0 else dims[i - 1], dims[i]))
            first = sum(depths[:i])
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(dims[i], heads[i], mlp_ratios[i], sr_ratios[i], rates[first + j]) for j in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))
        init_vit_weights(self, conv_fan_out=True)  # PVTv2's own initialisation

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
            maps.append(x)
        return maps


def load_pvt_v2(encoder: PVTv2, state: Mapping[str, torch.Tensor]) -> None:
    """Copy an official PVTv2 state dict (e.g. ImageNet ``pvt_v2_b2.pth``) into ``encoder``.

    Its classification head is ignored. The RGB kernel of the first patch embedding becomes one kernel per input
    channel, each the RGB sum divided by the number of inputs: equal inputs then respond as a grey image repeated
    in RGB (CENet's own treatment of grey inputs) does.
    """
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise ValueError(f"PVTv2 weights lack {len(missing)} of the encoder's tensors (e.g. {missing[:3]}): "
                         "not a pvt_v2 state dict of this size")
    tensors = {k: state[k] for k in own}
    first = "patch_embed1.proj.weight"
    cin = own[first].shape[1]
    if tensors[first].shape[1] != cin:
        tensors[first] = tensors[first].sum(dim=1, keepdim=True).div(cin).repeat(1, cin, 1, 1)
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in tensors.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ValueError("PVTv2 weights do not fit this encoder (use the full-size hyper-parameters): "
                         + "; ".join(wrong[:5]))
    encoder.load_state_dict(tensors)
