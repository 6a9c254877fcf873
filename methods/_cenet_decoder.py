"""CENet's decoder and output head, written from xmindflow/cenet @030a97d (``src/networks/cenet``).

Decoder (``decoders.py``): CFAM at the stride-32 map, then three times EUCB up-sampling, a DSEB skip enhancer
and a CFAM. Out head (``out.py``, ``--out_up_block upcn`` as in its scripts): the stride-4 map up-sampled
(bilinear, conv-BN-LeakyReLU) and concatenated with a learned-weight residual block of the input itself (5 x 5,
then max-pooled), a residual block, a 1 x 1 conv, then x2 bilinear up-sampling to the input size.

- CFAM (``cfam.py``): BN -> MCA -> layer scale, BN -> MLP -> layer scale (both scales initialised at 1e-6).
  MCA: a style-based channel gate (CCU: per-channel max/mean/std through a grouped Conv1d), SiLU(gate) x
  SiLU(multi-order value), a 1 x 1 projection, a residual, then a weighted non-local block. The value splits the
  channels 5:5:5:1 into three dilated separable convs (the stage's rates) and an image-pooling branch (7 x 7
  average pool, 1 x 1 conv, BN, LeakyReLU, x7 up-sampling, resized to the map). The MLP: 1 x 1, 3 x 3 depthwise,
  GELU, a spatial gate (SRM: channel max/mean/std -> convs -> BN -> sigmoid), 1 x 1.
- DSEB (``dseb.py``, skip mode ``cat``): on y = [decoder, skip], feature edge amplification (|x - resample(x)| at
  two scales, their difference weighted by a learned per-channel w) plus multi-head differential attention times
  y, a 1 x 1 mixer, plus the skip. The attention's tokens are the reference's *memory* view of the (B, C, H, W)
  map as (B, H W, C) (a reshape, not a transpose), and its output is viewed back the same way; we keep that.
- Differential attention (``multihead_diffattn.py``): two softmax maps per head, the second subtracted with
  lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init(depth), per-head RMSNorm (no affine), x (1 - lambda_init).
- EUCB (``blocks.py``): nearest x2, 3 x 3 depthwise conv, BN, LeakyReLU(0.2), 1 x 1 conv (its channel shuffle
  with one channel per group is the identity and is left out).

Initialisations follow the reference module by module (normal std 0.02 for EUCB / up-conv / separable convs,
truncated normal std 0.02 for the residual blocks, PyTorch defaults elsewhere). Only the spatial sizes are
generic: the reference hard-codes a 224 x 224 input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from methods._cenet_pvt import PVTv2


def _normal_init(module: nn.Module) -> nn.Module:
    """The reference's ``init_weights('normal')``: conv weights N(0, 0.02), zero biases, unit BatchNorms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class EUCB(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up_dwc = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(cin, cin, 3, padding=1, groups=cin,
                                                                            bias=False),
                                    nn.BatchNorm2d(cin), nn.LeakyReLU(0.2))
        self.pwc = nn.Sequential(nn.Conv2d(cin, cout, 1))
        _normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwc(self.up_dwc(x))


class UpConv(nn.Module):
    """Bilinear x2 (corners aligned), 3 x 3 conv (no bias), BN, LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                nn.LeakyReLU(0.2))
        _normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SepConvBN(nn.Module):
    """Dilated depthwise 3 x 3 -> BN -> ReLU -> pointwise -> BN -> ReLU (no biases)."""

    def __init__(self, channels: int, rate: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=rate, dilation=rate, groups=channels, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.pointwise_bn = nn.BatchNorm2d(channels)
        _normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise_bn(self.pointwise(F.relu(self.depthwise_bn(self.depthwise(x))))))


class MultiOrderDWConv(nn.Module):
    """Channels split 5:5:5:1 between three dilated separable convs and an image-pooling branch, then 1 x 1."""

    def __init__(self, dim: int, rates: list[int]):
        super().__init__()
        sizes = [int(dim * 5 / 16)] * 3 + [int(dim / 16)]
        if sum(sizes) != dim or min(sizes) == 0:
            raise ValueError(f"CENet: decoder width {dim} cannot be split 5:5:5:1 (use a multiple of 16)")
        self.sizes = sizes
        self.dlps = nn.ModuleList([*(SepConvBN(c, r) for c, r in zip(sizes, rates)), nn.Sequential(
            nn.AdaptiveAvgPool2d(7), nn.Conv2d(sizes[3], sizes[3], 1, bias=False), nn.BatchNorm2d(sizes[3]),
            nn.LeakyReLU(), nn.UpsamplingBilinear2d(scale_factor=7))])
        self.PW_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for branch, part in zip(self.dlps, torch.split(x, self.sizes, dim=1)):
            y = branch(part)
            if y.shape[-2:] != x.shape[-2:]:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            parts.append(y)
        return self.PW_conv(torch.cat(parts, dim=1))


class CCU(nn.Module):
    """Style-based channel recalibration from each channel's max, mean and (biased) std.

    The reference applies its BatchNorm only to batches of more than one sample; its inference feeds one slice at
    a time, so the norm acts in training only. We apply it in training (batches > 1) and never at inference, which
    reproduces both and keeps our batched predictions independent of the batch.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Conv1d(dim, 3 * dim, 3, groups=dim, bias=False)
        self.fc2 = nn.Conv1d(3 * dim, dim, 1, groups=dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.flatten(2)
        u = torch.stack([flat.amax(dim=2), flat.mean(dim=2), flat.std(dim=2, unbiased=False)], dim=-1)
        z = self.fc2(F.relu(self.fc1(u))).view(b, c)
        if self.training and b > 1:  # see the class doc
            z = self.bn(z)
        return x * torch.sigmoid(z).view(b, c, 1, 1)


class SRM(nn.Module):
    """Spatial gate from the channel max, mean and (unbiased) std of each pixel."""

    def __init__(self):
        super().__init__()
        self.pwc = nn.Conv2d(3, 1, 1, bias=False)
        self.dwc = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)], 1)
        return x * torch.sigmoid(self.bn(F.gelu(self.pwc(u) + self.dwc(u))))


class Nonlocal(nn.Module):
    """Softmax non-local block (scaled by C^-1/2) blended with its input: (1 - w) x + w BN(out(attention))."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_theta, self.conv_phi, self.conv_g, self.conv_out = (nn.Conv2d(dim, dim, 1) for _ in range(4))
        self.bn = nn.BatchNorm2d(dim)
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        theta, phi, g = (f(x).flatten(2).transpose(1, 2) for f in (self.conv_theta, self.conv_phi, self.conv_g))
        y = F.scaled_dot_product_attention(theta, phi, g, scale=c ** -0.5)
        p = self.bn(self.conv_out(y.transpose(1, 2).reshape(b, c, h, w)))
        return (1 - self.w) * x + self.w * p


class MCA(nn.Module):
    def __init__(self, dim: int, rates: list[int]):
        super().__init__()
        self.gate = nn.Conv2d(dim, dim, 1)
        self.value = MultiOrderDWConv(dim, rates)
        self.proj_2 = nn.Conv2d(dim, dim, 1)
        self.denoising_module = Nonlocal(dim)
        self.ccu = CCU(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ccu(x)
        y = self.proj_2(F.silu(self.gate(y)) * F.silu(self.value(y)))
        return self.denoising_module(y + x)


class CFAMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.srm = SRM()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.srm(F.gelu(self.dwconv(self.fc1(x)))))


class CFAModule(nn.Module):
    def __init__(self, dim: int, rates: list[int], ffn_ratio: int = 4, init_value: float = 1e-6):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.mca = MCA(dim, rates)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = CFAMlp(dim, dim * ffn_ratio)
        self.layer_scale_1 = nn.Parameter(torch.full((1, dim, 1, 1), init_value))
        self.layer_scale_2 = nn.Parameter(torch.full((1, dim, 1, 1), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.mca(self.norm1(x))
        return x + self.layer_scale_2 * self.mlp(self.norm2(x))


class FEA(nn.Module):
    """Feature edge amplification: x + w * mean over scale pairs of | |x - r_i(x)| - |x - r_j(x)| |."""

    def __init__(self, dim: int, scale_factors: list[float]):
        super().__init__()
        self.scale_factors = list(scale_factors)
        self.w = nn.Parameter(torch.randn(1, dim, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        edges = []
        for s in self.scale_factors:
            low = F.interpolate(x, scale_factor=s, mode="bilinear")
            edges.append((x - F.interpolate(low, size=x.shape[-2:], mode="bilinear")).abs())
        pairs = [(i, j) for i in range(len(edges)) for j in range(i + 1, len(edges))]
        edge = sum((edges[i] - edges[j]).abs() for i, j in pairs) / len(pairs)
        return x + self.w * edge


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension, in float32, without affine parameters."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


class MultiheadDiffAttn(nn.Module):
    """Differential attention (no mask, no rotary embedding, as CENet uses it); ``heads`` pairs of maps."""

    def __init__(self, dim: int, depth: int, heads: int):
        super().__init__()
        if dim % (2 * heads):
            raise ValueError(f"CENet: differential attention width {dim} is not divisible by 2 x {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads // 2
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * depth)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.randn(self.head_dim) * 0.1) for _ in range(4))
        self.subln = RMSNorm(1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q_proj(x).view(b, n, 2 * self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, 2 * self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, 2 * self.head_dim).transpose(1, 2)
        scores = torch.nan_to_num((q * self.head_dim ** -0.5) @ k.transpose(-1, -2))
        maps = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores).view(b, self.heads, 2, n, n)
        lam = (torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1).float())
               - torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2).float())).type_as(q) + self.lambda_init
        y = self.subln((maps[:, :, 0] - lam * maps[:, :, 1]) @ v) * (1 - self.lambda_init)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, c))


class DSEBlock(nn.Module):
    """Skip enhancer on y = [decoder, skip]: (FEA(y) + y) + DiffAttn(y) * y -> 1 x 1 mixer -> + skip."""

    def __init__(self, dim: int, scale_factors: list[float], heads: int, depth: int):
        super().__init__()
        self.boundary = FEA(2 * dim, scale_factors)
        self.diffattn = MultiheadDiffAttn(2 * dim, depth, heads)
        self.mixer = nn.Conv2d(2 * dim, dim, 1, bias=False)

    def forward(self, skip: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        y = torch.cat([dec, skip], dim=1)
        b, c, h, w = y.shape
        attended = self.diffattn(y.reshape(b, h * w, c)).reshape(b, c, h, w)  # the reference's memory view
        return self.mixer(self.boundary(y) + y + attended * y) + skip


class Decoder(nn.Module):
    RATES = ([2, 3, 5], [1, 2, 4], [1, 2, 3], [1, 2, 2])  # dilations at strides 4, 8, 16, 32

    def __init__(self, channels: list[int], scale_factors: list[float], heads: list[int]):
        super().__init__()
        c4, c3, c2, c1 = channels
        self.dec4 = CFAModule(c4, self.RATES[3])
        self.up3 = EUCB(c4, c3)
        self.skip_enhancer3 = DSEBlock(c3, scale_factors, heads[0], depth=4)
        self.dec3 = CFAModule(c3, self.RATES[2])
        self.up2 = EUCB(c3, c2)
        self.skip_enhancer2 = DSEBlock(c2, scale_factors, heads[1], depth=3)
        self.dec2 = CFAModule(c2, self.RATES[1])
        self.up1 = EUCB(c2, c1)
        self.skip_enhancer1 = DSEBlock(c1, scale_factors, heads[2], depth=2)
        self.dec1 = CFAModule(c1, self.RATES[0])

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        d = self.dec4(x)
        for up, enhance, dec, skip in ((self.up3, self.skip_enhancer3, self.dec3, skips[0]),
                                       (self.up2, self.skip_enhancer2, self.dec2, skips[1]),
                                       (self.up1, self.skip_enhancer1, self.dec1, skips[2])):
            d = up(d)
            d = dec(d + enhance(skip, d))
        return d


class UnetResBlock(nn.Module):
    """MONAI's residual block: conv-BN-LeakyReLU(0.01)-conv-BN, + (1 x 1 conv-BN) shortcut, LeakyReLU."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, kernel, padding=kernel // 2, bias=False)
        self.norm1, self.norm2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)
        self.downsample = cin != cout
        if self.downsample:
            self.conv3 = nn.Conv2d(cin, cout, 1, bias=False)
            self.norm3 = nn.BatchNorm2d(cout)
        for conv in (self.conv1, self.conv2, *([self.conv3] if self.downsample else [])):
            nn.init.trunc_normal_(conv.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(F.leaky_relu(self.norm1(self.conv1(x)), 0.01)))
        residual = self.norm3(self.conv3(x)) if self.downsample else x
        return F.leaky_relu(y + residual, 0.01)


class OutHead(nn.Module):
    def __init__(self, dec_channels: int, in_channels: int, num_classes: int):
        super().__init__()
        mid = dec_channels // 2
        self.w = nn.Parameter(torch.randn(1, mid, 1, 1) + 0.75)
        self.rb = nn.Sequential(UnetResBlock(in_channels, mid, 5), nn.MaxPool2d(2))
        self.up = UpConv(dec_channels, mid)
        out = nn.Conv2d(2 * mid, num_classes, 1)
        nn.init.trunc_normal_(out.weight, std=0.02)
        nn.init.zeros_(out.bias)
        self.out = nn.Sequential(UnetResBlock(2 * mid, 2 * mid, 3), out)

    def forward(self, dec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.out(torch.cat([self.up(dec), self.w * self.rb(x)], dim=1))
        return F.interpolate(y, scale_factor=2, mode="bilinear")


class CENet(nn.Module):
    """(B, in_channels, S, S) -> logits (B, classes, S, S); S a multiple of 32."""

    def __init__(self, in_channels: int, num_classes: int, *, dims: list[int], depths: list[int],
                 heads: list[int], sr_ratios: list[int], mlp_ratios: list[int], drop_path: float,
                 diffattn_heads: list[int], scale_factors: list[float]):
        super().__init__()
        self.backbone = PVTv2(in_channels, dims, depths, heads, sr_ratios, mlp_ratios, drop_path)
        self.decoder = Decoder(dims[::-1], scale_factors, diffattn_heads)
        self.out = OutHead(dims[0], in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"CENet needs sides that are multiples of 32, got {tuple(x.shape[-2:])}")
        x1, x2, x3, x4 = self.backbone(x)
        return self.out(self.decoder(x4, [x3, x2, x1]), x)
