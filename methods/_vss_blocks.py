"""VMamba building blocks shared by VM-UNet (``methods/vmunet.py``) and FusionMamba (``methods/fusionmamba.py``).

Written from VMamba as VM-UNet (JCruan519/VM-UNet, ``models/vmunet/vmamba.py``) and FusionMamba
(millieXie/FusionMamba, ``models/cross.py``) use it. Feature maps are channel-last (B, H, W, C) as in both.

- ``SS2D``: the 2-D selective-scan mixer. Linear in-projection to x and a gate z (2 x expand), depthwise 3 x 3
  convolution + SiLU on x, four scans of the map, each with its own x/dt projections, A and D (S4D-real
  initialisation, dt bias = inverse softplus of a log-uniform dt in [1e-3, 0.1]), LayerNorm of the merged
  scans, gate by SiLU(z), out-projection. ``scan="cross"`` is VM-UNet's (VMamba v0): row-major and column-major
  orders over all H x W tokens, each forwards and backwards, summed. ``scan="efficient"`` is FusionMamba's
  (EfficientVMamba, step 2): the map (zero-padded to even size) is split into its four 2 x 2 sub-lattices, each
  scanned in one order (row-, column-, row-, column-major), and every scan writes back its own lattice.
- Patch embedding (4 x 4, LayerNorm), patch merging (2 x 2 -> LayerNorm -> Linear 4C -> 2C), patch expanding
  (Linear 2C' -> 4C', pixel rearrangement, LayerNorm) and the final 4x expansion;
- ``VSSEncoder`` / ``VSSDecoder``: VMamba's U-shaped stages (downsample after each encoder stage but the last;
  decoder stage i > 0 adds the encoder's input of stage 4 - i, upsamples, then runs its blocks), any block type;
- the reference's initialisation is ``benchmark.nn.init.init_vit_weights`` (Linear: truncated normal std 0.02,
  zero bias; LayerNorm: 1, 0; convolutions and the SSM parameters keep their own).

The selective scan is ``benchmark.nn.selective_scan`` (pure PyTorch parallel scan; mamba_ssm's kernel on CUDA).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.selective_scan import selective_scan

SCANS = ("cross", "efficient")


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch of a whole sample with probability ``p`` while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


def _cross_scan(x: torch.Tensor):
    """(B, E, H, W) -> four sequences (B, 4, E, H*W) and their merge back to (B, E, H, W)."""
    b, e, h, w = x.shape
    rows = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    xs = torch.cat([rows, rows.flip(-1)], dim=1)

    def merge(ys: torch.Tensor) -> torch.Tensor:
        by_row = ys[:, 0] + ys[:, 2].flip(-1)
        by_col = (ys[:, 1] + ys[:, 3].flip(-1)).view(b, e, w, h).transpose(2, 3)
        return by_row.view(b, e, h, w) + by_col

    return xs, merge


def _efficient_scan(x: torch.Tensor):
    """(B, E, H, W) -> the four 2 x 2 sub-lattices as sequences (B, 4, E, ceil(H/2)*ceil(W/2)) and their merge."""
    b, e, h, w = x.shape
    x = F.pad(x, (0, w % 2, 0, h % 2))
    h2, w2 = x.shape[2] // 2, x.shape[3] // 2
    x6 = x.view(b, e, h2, 2, w2, 2)  # (.., row, row parity, col, col parity)
    lattices = [x6[:, :, :, 0, :, 0], x6[:, :, :, 1, :, 0].transpose(2, 3),
                x6[:, :, :, 0, :, 1], x6[:, :, :, 1, :, 1].transpose(2, 3)]
    xs = torch.stack([lat.flatten(2) for lat in lattices], dim=1)

    def merge(ys: torch.Tensor) -> torch.Tensor:
        p00, p10 = ys[:, 0].view(b, e, h2, w2), ys[:, 1].view(b, e, w2, h2).transpose(2, 3)
        p01, p11 = ys[:, 2].view(b, e, h2, w2), ys[:, 3].view(b, e, w2, h2).transpose(2, 3)
        y = torch.stack([torch.stack([p00, p01], -1), torch.stack([p10, p11], -1)], dim=-3)
        return y.reshape(b, e, 2 * h2, 2 * w2)[:, :, :h, :w]

    return xs, merge


class SS2D(nn.Module):
    """The 2-D selective-scan mixer on (B, H, W, d_model) (module doc); ``scan``: ``cross`` or ``efficient``."""

    directions = 4

    def __init__(self, d_model: int, d_state: int = 16, expand: int = 2, d_conv: int = 3, scan: str = "cross",
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4):
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"SS2D: scan must be one of {SCANS}, got {scan!r}")
        self.scan = _cross_scan if scan == "cross" else _efficient_scan
        k, e = self.directions, expand * d_model
        self.d_state, self.dt_rank = d_state, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * e, bias=False)
        self.conv2d = nn.Conv2d(e, e, d_conv, padding=(d_conv - 1) // 2, groups=e)
        bound = e ** -0.5  # nn.Linear's default initialisation of the per-direction x projections
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, e).uniform_(-bound, bound))
        rank_bound = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, e, self.dt_rank).uniform_(-rank_bound, rank_bound))
        dt = torch.exp(torch.rand(k, e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(bias) = dt
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * e, 1))
        self.Ds = nn.Parameter(torch.ones(k * e))
        self.out_norm = nn.LayerNorm(e)
        self.out_proj = nn.Linear(e, d_model, bias=False)

    def ssm(self, x: torch.Tensor) -> torch.Tensor:
        """The four selective scans of a (B, E, H, W) map, merged and normalised: (B, H, W, E)."""
        b = x.shape[0]
        xs, merge = self.scan(x)
        k, e, length = xs.shape[1:]
        x_dbl = torch.einsum("bkel,kce->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,ker->bkel", dts, self.dt_projs_weight)
        ys = selective_scan(xs.reshape(b, k * e, length).float(), dts.reshape(b, k * e, length),
                            -torch.exp(self.A_logs.float()), Bs, Cs, self.Ds,
                            delta_bias=self.dt_projs_bias.flatten(), delta_softplus=True)
        return self.out_norm(merge(ys.view(b, k, e, length)).permute(0, 2, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        return self.out_proj(self.ssm(x) * F.silu(z))


class PatchEmbed2D(nn.Module):
    """(B, C, H, W) -> (B, H/p, W/p, dim): a p x p stride-p convolution and LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): the 2 x 2 neighbours concatenated, LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2  # an odd row/column is dropped, as in VMamba
        x = torch.cat([x[:, 0:h:2, 0:w:2], x[:, 1:h:2, 0:w:2], x[:, 0:h:2, 1:w:2], x[:, 1:h:2, 1:w:2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """(B, H, W, C) -> (B, sH, sW, C / s): Linear C -> s * C, each token's s * s pixels rearranged, LayerNorm.

    VMamba's ``PatchExpand2D(dim)`` takes 2 * dim channels to dim (scale 2); ``Final_PatchExpand2D(dim)`` takes
    dim channels to dim / 4 (scale 4).
    """

    def __init__(self, in_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(in_dim, scale * in_dim, bias=False)
        self.norm = nn.LayerNorm(in_dim // scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, c // s).permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c // s)
        return self.norm(x)


def drop_path_rates(depths: list[int], rate: float, falling: bool = False) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``rate`` over all blocks (or falling), split by stage."""
    rates = torch.linspace(0, rate, sum(depths)).tolist()
    rates = rates[::-1] if falling else rates
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + n] for s, n in zip(starts, depths)]


Block = Callable[[int, float], nn.Module]  # (dim, drop path) -> a (B, H, W, dim) -> (B, H, W, dim) module


class VSSEncoder(nn.Module):
    """Stages of ``depths[i]`` blocks at ``dims[i]``, patch merging after each but the last.

    ``forward`` returns the output of the last stage and the inputs of every stage (VMamba's skips).
    """

    def __init__(self, dims: list[int], depths: list[int], block: Block, drop_path_rate: float):
        super().__init__()
        rates = drop_path_rates(depths, drop_path_rate)
        self.stages = nn.ModuleList(nn.ModuleList(block(d, r) for r in rs) for d, rs in zip(dims, rates))
        self.merges = nn.ModuleList(PatchMerging2D(d) for d in dims[:-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, blocks in enumerate(self.stages):
            skips.append(x)
            for blk in blocks:
                x = blk(x)
            if i < len(self.merges):
                x = self.merges[i](x)
        return x, skips


class VSSDecoder(nn.Module):
    """Stages at ``dims[::-1]`` with ``depths[i]`` blocks; stage i > 0 takes x + skip, expands 2x, then blocks.

    Stochastic depth falls from ``drop_path_rate`` to 0 (the encoder's schedule reversed). Only the skips of
    encoder stages 1..3 are read (VMamba adds ``skips[-i]`` before decoder stage i); the first is not.
    """

    def __init__(self, dims: list[int], depths: list[int], block: Block, drop_path_rate: float):
        super().__init__()
        up_dims = list(dims[::-1])
        rates = drop_path_rates(depths, drop_path_rate, falling=True)
        self.expands = nn.ModuleList(PatchExpand2D(2 * d, 2) for d in up_dims[1:])
        self.stages = nn.ModuleList(nn.ModuleList(block(d, r) for r in rs) for d, rs in zip(up_dims, rates))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for i, blocks in enumerate(self.stages):
            if i > 0:
                x = self.expands[i - 1](x + skips[-i])
            for blk in blocks:
                x = blk(x)
        return x
