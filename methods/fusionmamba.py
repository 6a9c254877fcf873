"""FusionMamba (Xie et al., Visual Intelligence 2024): a VMamba U-Net fusing two images through cross-SS2D skips.

Written from millieXie/FusionMamba (``models/vmamba_Fusion_efficross.py``, ``models/cross.py``, ``loss.py``,
``train.py``, ``test.py``, its bundled ``pytorch_msssim``), used for facts only; the blocks as in ``cross.py``
@e850369 and the output residual as in ``vmamba_Fusion_efficross.py`` @8a0396a (with the unused parts added back,
this architecture counts exactly the 225,419,541 parameters given for @3ee1e7a). Shared VMamba blocks:
``methods/_vss_blocks.py``.

Architecture: each grey source gets its own 4 x 4 patch embedding (1 -> 96, LayerNorm); one encoder, shared by
both, of [2, 2, 9, 2] blocks at 96/192/384/768 channels with patch merging; the two deepest features are summed;
at each scale a cross block fuses the two skips; decoder of [2, 9, 2, 2] blocks at 768/384/192/96 adding the
fused skips, expanding 2x; final 4x expansion and a 1 x 1 convolution to one channel; output = decoder
+ 2 a + 2 b. Stochastic depth rises to 0.1 over the encoder and falls over the decoder.
- Block (its ``VSSBlock_new``): s = SS2D(LN(x)) with the efficient (step-2, four sub-lattice) scan, d_state 16,
  expand 2; t = s + ECA(s); x + DropPath(BiAttn(s) + BiAttn(LDC(t))), then x + DropPath(MLP(LN(x))), MLP ratio 4.
  LDC is a 3 x 3 convolution whose weight is multiplied by a mask 1 - theta m center sum(W) (learnable theta,
  per-channel-pair m); BiAttn gates channels by a squeeze (LN, mean, Linear C -> C/8, GELU, Linear, sigmoid);
  ECA gates channels by a 3-tap convolution across the channel means.
- Cross block (its ``VSSBlock_Cross_new``): F_i = LDC_i(x_i) + sigmoid(mean(x_i - x_j)) (x_1 + x_2) + x_i;
  c = CrossSS2D(LN(F_1), LN(F_2)); out = x_1 + x_2 + c + ECA(c). CrossSS2D projects both inputs, runs the
  shared depthwise convolution + SiLU on each, scans x_1 x_2 + x_1 + x_2 (efficient scan), LayerNorm, and gates
  the result by SiLU(z_1) + SiLU(SiLU(z_1)) (its code gates the second branch with z_1 as well).

Objective (its ``loss.py``, weights for CT-MRI): 10 * MS-SSIM term + 10 * MSE(F, max(a, b)) + 1 * L1(Sobel F,
max(Sobel a, Sobel b)) on the output clamped to [0, 1]; MS-SSIM term = 0.5 (1 - MS-SSIM(F, a)) + 0.5 (1 -
MS-SSIM(F, b)), with its bundled implementation: 5 levels (2x average pooling), Gaussian window 11 (sigma 1.5,
shrunk to the image at coarse levels, no padding), C1 = 0.01^2, C2 = 0.03^2 (range 1), per-level means over the
batch, values mapped to (v + 1) / 2, combined as prod_{i<5} cs_i^{w_i} ssim_5^{w_5} (the last level's SSIM
enters once per level, as written there), weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Sobel: |Gx| + |Gy|
with unnormalised kernels, zero padding. Recipe (``train.py``): Adam, lr 1e-4 * 0.75^(epoch - 1) for epochs 0
and 1, batch 2, 2 epochs, no clipping. Inference (``test.py``): clamp to [0, 1], then min-max normalise.

Declared deviations:
- epochs are passes over our training store (its 2 epochs are 2 passes over its training set, 30k samples);
- its training resizes both sources to 256 x 256; ours trains on whole slices at their own size (no
  ``training.fusion_patch`` crops): the sources are padded (reflect; replicate where a side is too short) to a
  multiple of 32 (4 x 4 patches, three 2x merges), the output cropped back and the loss computed on the crop;
  fusion at inference does the same;
- the selective scan runs in pure PyTorch (``mambapy``'s parallel scan) unless ``mamba_ssm`` is installed and
  the run is on CUDA (``benchmark/nn/selective_scan.py``); both compute the same recurrence;
- parameters it holds but never uses are left out (-1.1 %): the cross block of the first scale (its decoder never
  reads the first fused skip), each cross block's unused 1 x 1 convolution (``Differential_enhance.lastconv``)
  and the gate half of ``in_proj2`` (its code gates with z_1 only). Its LDC's constant all-ones ``base_mask`` is
  kept as the frozen parameter it is there (60.7 M of the 225.4 M), so that the count compares.
Trained from scratch, as its ``train.py`` does (no backbone pretraining).
The reference's tiny CT-MRI variant (141,934,037 parameters) is 16 blocks at 384 channels lighter (depths
[2, 2, 1, 2] / [2, 1, 2, 2] give that count); ``hyperparameters`` follow the default model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.methods import FusionMethod
from benchmark.nn.functional import minmax_per_image
from benchmark.nn.init import init_vit_weights
from benchmark.nn.restormer import pad_to_multiple
from benchmark.training.stages import fusion_stage
from methods._vss_blocks import SS2D, DropPath, PatchEmbed2D, PatchExpand2D, VSSDecoder, VSSEncoder

MULTIPLE = 32  # 4 x 4 patches, then three 2x merges
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class LDC(nn.Module):
    """FusionMamba's learnable-difference 3 x 3 convolution on (B, C, H, W) (module doc)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.base_mask = nn.Parameter(torch.ones_like(self.conv.weight), requires_grad=False)  # as in its code
        self.learnable_mask = nn.Parameter(torch.ones(channels, channels))
        self.learnable_theta = nn.Parameter(torch.full((1,), 0.5))
        center = torch.zeros(3, 3)
        center[1, 1] = 1.0
        self.register_buffer("center", center, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        mask = self.base_mask - self.learnable_theta * self.learnable_mask[:, :, None, None] * self.center \
            * w.sum(dim=(2, 3))[:, :, None, None]
        return F.conv2d(x, w * mask, padding=1)


def eca(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Efficient channel attention on (B, H, W, C): sigmoid(conv over the channel means) gates the channels."""
    weights = conv(x.mean(dim=(1, 2))[:, None, :])[:, 0]
    return x * torch.sigmoid(weights)[:, None, None, :]


class BiAttn(nn.Module):
    """Channel gate on (B, H, W, C): sigmoid(Linear(GELU(Linear(mean_HW LN(x))))) * x, reduction 8."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.global_reduce = nn.Linear(channels, int(channels * 0.125))
        self.channel_select = nn.Linear(int(channels * 0.125), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = F.gelu(self.global_reduce(self.norm(x).mean(dim=(1, 2), keepdim=True)))
        return x * torch.sigmoid(self.channel_select(squeeze))


class FusionVSSBlock(nn.Module):
    """FusionMamba's encoder/decoder block on (B, H, W, C) (module doc)."""

    def __init__(self, dim: int, d_state: int, drop_path: float, mlp_ratio: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, scan="efficient")
        self.conv_branch = LDC(dim)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.se = BiAttn(dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.op(self.norm(x))
        t = s + eca(s, self.eca)
        c = self.conv_branch(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.se(s) + self.se(c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossSS2D(SS2D):
    """SS2D of two inputs (module doc): ``in_proj`` gives x_1 and the gate z_1, ``in_proj2`` gives x_2."""

    def __init__(self, dim: int, d_state: int):
        super().__init__(dim, d_state=d_state, scan="efficient")
        self.in_proj2 = nn.Linear(dim, self.in_proj.out_features // 2, bias=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1, z = self.in_proj(x1).chunk(2, dim=-1)
        x1 = F.silu(self.conv2d(x1.permute(0, 3, 1, 2)))
        x2 = F.silu(self.conv2d(self.in_proj2(x2).permute(0, 3, 1, 2)))
        y = self.ssm(x1 * x2 + x1 + x2)
        gate = F.silu(z)
        return self.out_proj(y * gate + y * F.silu(gate))


class CrossBlock(nn.Module):
    """FusionMamba's skip fusion of two (B, H, W, C) maps (module doc)."""

    def __init__(self, dim: int, d_state: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.texture_enhance1, self.texture_enhance2 = LDC(dim), LDC(dim)
        self.cross = CrossSS2D(dim, d_state)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        a, b = x1.permute(0, 3, 1, 2), x2.permute(0, 3, 1, 2)
        fuse = a + b
        f1 = self.texture_enhance1(a) + torch.sigmoid((a - b).mean(dim=(2, 3), keepdim=True)) * fuse + a
        f2 = self.texture_enhance2(b) + torch.sigmoid((b - a).mean(dim=(2, 3), keepdim=True)) * fuse + b
        c = self.cross(self.ln_1(f1.permute(0, 2, 3, 1)), self.ln_2(f2.permute(0, 2, 3, 1)))
        return x1 + x2 + c + eca(c, self.eca)


class FusionMambaNet(nn.Module):
    """``forward(a, b)``: two (B, 1, H, W) sources -> the unclamped fused image (B, 1, H, W), any H, W."""

    def __init__(self, dims: list[int], depths: list[int], depths_decoder: list[int], d_state: int,
                 drop_path_rate: float):
        super().__init__()
        block = lambda dim, rate: FusionVSSBlock(dim, d_state, rate)  # noqa: E731
        self.patch_embed1, self.patch_embed2 = PatchEmbed2D(1, dims[0]), PatchEmbed2D(1, dims[0])
        self.encoder = VSSEncoder(dims, depths, block, drop_path_rate)
        self.cross_blocks = nn.ModuleList(CrossBlock(d, d_state) for d in dims[1:])  # the decoder reads these
        self.decoder = VSSDecoder(dims, depths_decoder, block, drop_path_rate)
        self.final_up = PatchExpand2D(dims[0], 4)
        self.final_conv = nn.Conv2d(dims[0] // 4, 1, 1)
        init_vit_weights(self)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        (a, (h, w)), (b, _) = pad_to_multiple(a, MULTIPLE), pad_to_multiple(b, MULTIPLE)
        x1, skips1 = self.encoder(self.patch_embed1(a))
        x2, skips2 = self.encoder(self.patch_embed2(b))
        fused = [None] + [blk(s1, s2) for blk, s1, s2 in zip(self.cross_blocks, skips1[1:], skips2[1:])]
        x = self.decoder(x1 + x2, fused)
        out = self.final_conv(self.final_up(x).permute(0, 3, 1, 2)) + 2 * a + 2 * b
        return out[..., :h, :w]


def _gaussian_blur(maps: torch.Tensor, size: int, sigma: float = 1.5) -> torch.Tensor:
    """Each channel of (B, K, H, W) filtered by the normalised size x size Gaussian, no padding (separably)."""
    g = torch.exp(-((torch.arange(size, dtype=maps.dtype, device=maps.device) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    k = maps.shape[1]
    maps = F.conv2d(maps, g.view(1, 1, size, 1).expand(k, 1, size, 1), groups=k)
    return F.conv2d(maps, g.view(1, 1, 1, size).expand(k, 1, 1, size), groups=k)


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, window_size: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term of (B, 1, H, W) images in [0, 1] (no padding)."""
    stats = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), min(window_size, *x.shape[-2:]))
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.unbind(dim=1)
    var_x, var_y, cov = e_xx - mu_x ** 2, e_yy - mu_y ** 2, e_xy - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    v1, v2 = 2 * cov + c2, var_x + var_y + c2
    ssim = (2 * mu_x * mu_y + c1) * v1 / ((mu_x ** 2 + mu_y ** 2 + c1) * v2)
    return ssim.mean(), (v1 / v2).mean()


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM as FusionMamba's bundled ``pytorch_msssim.msssim(x, y, normalize=True)`` computes it (module doc)."""
    levels = len(MSSSIM_WEIGHTS)
    if min(x.shape[-2:]) < 2 ** (levels - 1):
        raise ValueError(f"MS-SSIM needs images of at least {2 ** (levels - 1)} pixels a side, got "
                         f"{tuple(x.shape[-2:])}")
    sims, css = [], []
    for level in range(levels):
        sim, cs = _ssim_and_cs(x, y)
        sims.append(sim)
        css.append(cs)
        if level < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    weights = torch.tensor(MSSSIM_WEIGHTS, device=x.device)
    sims, css = (torch.stack(sims) + 1) / 2, (torch.stack(css) + 1) / 2
    return torch.prod(css[:-1] ** weights[:-1] * sims[-1] ** weights[-1])


def sobel(x: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of (B, 1, H, W) with unnormalised Sobel kernels and zero padding."""
    kernels = torch.tensor([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                            [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]], device=x.device)
    g = F.conv2d(x, kernels[:, None].to(x.dtype), padding=1)
    return g.abs().sum(dim=1, keepdim=True)


class Method(FusionMethod):
    kind = "fusion"
    display_name = "FusionMamba"
    paper_name = "FusionMamba"
    datasets = ("brats", "paired")
    hyperparameters = {
        "dims": [96, 192, 384, 768],
        "depths": [2, 2, 9, 2],
        "depths_decoder": [2, 9, 2, 2],
        "d_state": 16,
        "drop_path_rate": 0.1,
        "epochs": 2,
        "lr": 1e-4,
        "lr_decay": 0.75,
        "w_ssim": 10.0,
        "w_mse": 10.0,
        "w_grad": 1.0,
    }
    test_config = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4}
    training = {"batch_size": 2, "grad_clip": 0.0}
    requires = {"mambapy": "mambapy>=1.2"}
    accelerators = {"mamba_ssm": "CUDA selective-scan kernel (mamba-ssm), used on CUDA in place of the pure "
                                 "PyTorch parallel scan"}
    reference = {
        "repository": "https://github.com/millieXie/FusionMamba",
        "commit": "3ee1e7a",
        "parameters": 225419541,
        "notes": "frozen = its LDC's constant all-ones base_mask, kept as in its code; -1.1 %: parameters it never "
                 "uses left out (first-scale cross block, Differential_enhance.lastconv, in_proj2's gate half); "
                 "its tiny CT-MRI variant: 141,934,037",
    }

    def build(self) -> FusionMambaNet:
        h = self.hparams
        return FusionMambaNet(h["dims"], h["depths"], h["depths_decoder"], h["d_state"], h["drop_path_rate"])

    def fuse(self, nets, a, b):
        return minmax_per_image(nets["fusion"](a, b).float().clamp(0, 1))  # its test.py

    def fusion_loss(self, model, a, b, *, epoch, step):
        h = self.hparams
        fused = model(a, b).float().clamp(0, 1)
        a, b = a.float(), b.float()
        ssim = 0.5 * (1 - ms_ssim(fused, a)) + 0.5 * (1 - ms_ssim(fused, b))
        mse = F.mse_loss(fused, torch.maximum(a, b))
        grad = F.l1_loss(sobel(fused), torch.maximum(sobel(a), sobel(b)))
        loss = h["w_ssim"] * ssim + h["w_mse"] * mse + h["w_grad"] * grad
        return loss, {"ssim": ssim.item(), "mse": mse.item(), "grad": grad.item()}

    def stages(self, ctx, nets):
        model, h = nets["fusion"], self.hparams
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = ctx.track(torch.optim.Adam(trainable, lr=h["lr"]), "fusion")
        schedule = lambda epoch, epochs: h["lr"] * h["lr_decay"] ** (epoch - 1)  # noqa: E731  (its train.py)
        # whole images, as its training on whole (resized) images: no ``training.fusion_patch`` crops
        return [fusion_stage(ctx, "fusion", model, optimizer, self.fusion_loss, h["epochs"], schedule, crop=None)]
