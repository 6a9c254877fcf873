"""BSAFusion's networks (Li et al., AAAI'25), written from the official code (slrl123/BSAFusion @c982182,
``modal_2d/``); see ``methods/bsafusion.py`` for the method and its declared differences.

Data flow for a fixed image ``a`` and a moving image ``b`` (both (B, 1, H, W), H and W multiples of 16):

1. ``encoder``: two light Restormer blocks 1 -> 8 -> 3 channels, shared by both images; the 8-channel map is the
   shallow feature the fusion decoder re-uses at full size.
2. ``embed`` + ``classifier``: a 16-px patch convolution to 256-d tokens (after adding a learned 256 x 256
   positional map resized to the image) and a 2-block, 4-head ViT whose class token predicts the modality.
3. ``transfer``: each image's tokens receive the other image's class token (the "modality feature representation
   head") and pass through their own 2 ViT blocks; ``discriminator`` (a frozen copy of the classifier's token
   body, refreshed every epoch) scores the transferred tokens, and the loss pushes them to [0.5, 0.5].
4. ``registration``: five levels from the token grid (H/16) to full size, each predicting a tanh flow for ``a``
   and one for ``b`` from cross-attended features; the features are warped and up-sampled level by level, and the
   ten flows are integrated into one field (b's flows minus a's, each scaled to full-size pixels).
5. ``fusion``: a Restormer-lite decoder over the classifier's (not the transferred) token grids, with ``b``'s
   warped by the field at every scale, then the warped shallow features; sigmoid output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.restormer import pad_to_multiple

LEVELS = 4  # x2 up-samplings from the token grid back to the image
PATCH = 2**LEVELS  # so the ViT's patches are 16 px and inputs must be multiples of 16 (``project()`` of the code)


def warp(x: torch.Tensor, flow: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear sample of ``x`` (B, C, H, W) at ``p + flow(p)``; ``flow`` (B, 2, H, W) in pixels, channel 0 along
    W and channel 1 along H (the code's convention). Zero flow is the identity (``align_corners=True``)."""
    b, _, h, w = flow.shape
    with torch.autocast(device_type=flow.device.type, enabled=False):
        flow = flow.float()
        xs = torch.arange(w, device=flow.device, dtype=torch.float32).view(1, 1, w)
        ys = torch.arange(h, device=flow.device, dtype=torch.float32).view(1, h, 1)
        gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
        gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
        grid = torch.stack((gx, gy), dim=-1)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)
    return out.to(x.dtype)


# ------------------------------------------------------------------------------------ BSAFusion's Restormer


def _conv_pair(cin: int, cout: int) -> nn.Sequential:
    """1 x 1 then a dense (not depthwise) 3 x 3 convolution, both biased, as every projection of the code's block."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.Conv2d(cout, cout, 3, padding=1))


def spatial_norm(x: torch.Tensor) -> torch.Tensor:
    """``F.layer_norm(x, x.shape[-2:])``: each channel standardised over its own pixels, no affine (float32)."""
    return F.layer_norm(x.float(), x.shape[-2:]).to(x.dtype)


class ChannelAttention(nn.Module):
    """The code's MDTA: one C x C map of raw q.k products (no L2 norm, no scale, no heads), softmax over all C^2
    entries at once, applied to v; residual. Runs in float32 (the products sum H x W terms)."""

    def __init__(self, channels: int):
        super().__init__()
        self.q, self.k, self.v = (_conv_pair(channels, channels) for _ in range(3))
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = spatial_norm(x)
        q, k, v = (proj(y).flatten(2) for proj in (self.q, self.k, self.v))  # (B, C, HW)
        with torch.autocast(device_type=x.device.type, enabled=False):
            attn = k.float() @ q.float().transpose(1, 2)  # attn[i, j] = <k_i, q_j>
            attn = attn.flatten(1).softmax(-1).view(b, c, c)
            out = attn.transpose(1, 2) @ v.float()  # out_j = sum_i attn[i, j] v_i
        return x + self.out(out.to(x.dtype).view(b, c, h, w))


class GatedFeedForward(nn.Module):
    """The code's GDFN: GELU(gate) * value, each a 1 x 1 + dense 3 x 3 pair to 4 C channels, 1 x 1 back; residual."""

    def __init__(self, channels: int, expansion: int = 4):
        super().__init__()
        hidden = channels * expansion
        self.gate = _conv_pair(channels, hidden)
        self.value = _conv_pair(channels, hidden)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = spatial_norm(x)
        return x + self.out(F.gelu(self.gate(y)) * self.value(y))


def restormer(cin: int, cout: int) -> nn.Sequential:
    """The code's ``Restormer(in_c, out_c)``: a 1 x 1 channel change, then attention and feed-forward at ``cout``."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1), ChannelAttention(cout), GatedFeedForward(cout))


# ------------------------------------------------------------------------------------ ViT classifier and transfer


class SelfAttention(nn.Module):
    """monai's ``SABlock``: bias-free qkv, scaled dot-product heads, dropout on the weights and on the output."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.drop_weights = nn.Dropout(dropout)
        self.drop_output = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        out = (self.drop_weights(attn) @ v).transpose(1, 2).reshape(b, n, d)
        return self.drop_output(self.proj(out))


class VitBlock(nn.Module):
    """The code's ``VitBlock``: ONE LayerNorm before both the attention and the MLP (its ``norm_layer1`` is never
    used), monai's ``MLPBlock`` (Linear, GELU, Linear; its dropout is 0 in every use)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.mlp(self.norm(x))


def vit_blocks(dim: int, heads: int, mlp_dim: int, dropout: float, n: int) -> nn.Sequential:
    return nn.Sequential(*(VitBlock(dim, heads, mlp_dim, dropout) for _ in range(n)))


class PatchEmbedding(nn.Module):
    """The code's ``PatchEmbedding2D``: add a learned (pos_size x pos_size) map, resized to the image and shared by
    the channels, then a 16-px patch convolution; tokens in row-major order (B, HW/256, dim)."""

    def __init__(self, in_channels: int, dim: int, pos_size: int):
        super().__init__()
        self.position = nn.Parameter(torch.randn(1, 1, pos_size, pos_size))
        self.proj = nn.Conv2d(in_channels, dim, PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = F.interpolate(self.position, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.proj(x + pos.to(x.dtype)).flatten(2).transpose(1, 2)


class TokenClassifier(nn.Module):
    """A class token, ViT blocks and an MLP head on the class token (2 modality logits).

    The classifier's body; the modality discriminator is a second instance that receives tokens directly.
    Returns (logits, class token, patch tokens)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, blocks: int):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = vit_blocks(dim, heads, mlp_dim, dropout, blocks)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.blocks(torch.cat((self.cls_token.expand(len(tokens), -1, -1), tokens), dim=1))
        return self.head(x[:, 0]), x[:, 0], x[:, 1:]


class CrossTokenTransfer(nn.Module):
    """The code's ``Transfer``: add the OTHER image's class token to every token, append an own learned class
    token, run each image's own ViT blocks (no dropout).

    Reproduced as the code has it: the class token is appended LAST but the output is read from index 1, so the
    first patch token is dropped and the processed class token fills the last cell of the token grid."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, blocks: int):
        super().__init__()
        self.cls_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_b = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks_a = vit_blocks(dim, heads, mlp_dim, 0.0, blocks)
        self.blocks_b = vit_blocks(dim, heads, mlp_dim, 0.0, blocks)

    def forward(self, tokens_a, tokens_b, cls_a, cls_b) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(tokens_a)
        xa = torch.cat((tokens_a + cls_b[:, None], self.cls_a.expand(n, -1, -1)), dim=1)
        xb = torch.cat((tokens_b + cls_a[:, None], self.cls_b.expand(n, -1, -1)), dim=1)
        return self.blocks_a(xa)[:, 1:], self.blocks_b(xb)[:, 1:]


# ------------------------------------------------------------------------------------ bidirectional stepwise RegNet


class SpatialCrossAttention(nn.Module):
    """The code's ``CrossAttention``: ReLU(conv x) * softmax over the pixels of (ReLU(conv x) * ReLU(conv y)) + x."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_x = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.conv_y = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.conv_x(x), self.conv_y(y)
        attn = (fx * fy).flatten(2).float().softmax(-1).view_as(fx).to(fx.dtype)
        return x + fx * attn


class RegistrationBlock(nn.Module):
    """The code's ``FusionRegBlk_lite`` for one image at one level: merge the concatenated pair (1 x 1, LeakyReLU),
    cross-attend both ways with ONE attention module, a residual conv, a tanh flow (3 x 3 -> 2); the block's own
    feature goes up to the next level (x2, 1 x 1, LeakyReLU); the last level has no next level."""

    def __init__(self, channels: int, next_channels: int | None):
        super().__init__()
        self.merge = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.LeakyReLU())
        self.cross = SpatialCrossAttention(channels)
        self.refine = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())
        self.flow = nn.Sequential(nn.Conv2d(channels, 2, 3, padding=1), nn.Tanh())
        self.up = None if next_channels is None else nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels, next_channels, 1), nn.LeakyReLU())

    def forward(self, feature: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        merged = self.merge(pair)
        x = self.cross(feature, merged) + self.cross(merged, feature)
        x = x + self.refine(x)
        return (None if self.up is None else self.up(x)), self.flow(x)


def up_block(cin: int, cout: int) -> nn.Sequential:
    """The code's ``UpBlk`` (shared by both images): x2 bilinear, 1 x 1, 3 x 3, InstanceNorm, LeakyReLU."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), nn.Conv2d(cin, cout, 1),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.LeakyReLU())


def integrate_flows(flows: list[torch.Tensor]) -> torch.Tensor:
    """The code's ``flow_integration_ir``: each level's flow up-sampled to full size (align_corners=True) and
    scaled by the size ratio into full-size pixels; the sum of b's (odd-indexed) minus the sum of a's. In float32:
    the field reaches 31 px, where bfloat16 would round to 1/8 px."""
    size = flows[-1].shape[-2:]
    total = torch.zeros_like(flows[-1], dtype=torch.float32)
    for i, flow in enumerate(flows):
        flow, scale = flow.float(), size[0] // flow.shape[-2]
        if scale > 1:
            flow = F.interpolate(flow, size=size, mode="bilinear", align_corners=True) * scale
        total = total + flow if i % 2 else total - flow
    return total


class StepwiseRegistration(nn.Module):
    """The code's ``RegNet_lite``: per level, a flow for each image from its own feature path and the concatenated
    (progressively warped) pair; both warped by their flows, then up-sampled to the next level."""

    def __init__(self, channels: list[int]):
        super().__init__()
        nexts = [*channels[1:], None]
        self.blocks_a = nn.ModuleList(RegistrationBlock(c, n) for c, n in zip(channels, nexts))
        self.blocks_b = nn.ModuleList(RegistrationBlock(c, n) for c, n in zip(channels, nexts))
        self.up = nn.ModuleList(up_block(c, n) for c, n in zip(channels, channels[1:]))

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        ga, gb = fa, fb
        flows = []
        for level, (block_a, block_b) in enumerate(zip(self.blocks_a, self.blocks_b)):
            pair = torch.cat((fa, fb), dim=1)
            ga, flow_a = block_a(ga, pair)
            gb, flow_b = block_b(gb, pair)
            flows += [flow_a, flow_b]
            if level < len(self.up):  # the last level's warped features are not used
                fa, fb = self.up[level](warp(fa, flow_a)), self.up[level](warp(fb, flow_b))
        return flows, integrate_flows(flows)


# ------------------------------------------------------------------------------------ FusionNet


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(cin, cout, 1), nn.ReLU())


class FusionDecoder(nn.Module):
    """The code's ``FusionNet_lite``: at each scale from H/16, a Restormer block fuses a's grid, b's grid warped by
    the field (resized, divided by the scale) and the previous fused map; the grids go up by a 1 x 1 shared by both
    images, the fused map by its own. At full size the warped shallow features join; two blocks and a sigmoid."""

    def __init__(self, dim: int, channels: list[int], shallow: int):
        super().__init__()
        c = [dim, *channels]
        self.blocks = nn.ModuleList([restormer(2 * c[0], c[1])] +
                                    [restormer(3 * c[k], c[k + 1]) for k in range(1, len(channels))])
        self.up_sources = nn.ModuleList(_up(c[k], c[k + 1]) for k in range(len(channels) - 1))
        self.up_fused = nn.ModuleList(_up(c[k + 1], c[k + 1]) for k in range(len(channels) - 1))
        self.out = nn.Sequential(restormer(c[-1] + 2 * shallow, c[-1]), restormer(c[-1], 1), nn.Sigmoid())

    def forward(self, shallow_a, shallow_b, grid_a, grid_b, flow) -> torch.Tensor:
        fused = None
        for k, block in enumerate(self.blocks):
            scaled = F.interpolate(flow, size=grid_b.shape[-2:], mode="bilinear") / (flow.shape[-2] // grid_b.shape[-2])
            parts = [grid_a, warp(grid_b, scaled)] + ([] if fused is None else [fused])
            fused = block(torch.cat(parts, dim=1))
            if k < len(self.up_sources):
                grid_a, grid_b = self.up_sources[k](grid_a), self.up_sources[k](grid_b)
                fused = self.up_fused[k](fused)
        fused = F.interpolate(fused, scale_factor=2, mode="bilinear")
        return self.out(torch.cat((fused, shallow_a, warp(shallow_b, flow)), dim=1))


# ------------------------------------------------------------------------------------ the whole model


@dataclass
class BSAFusionOutput:
    fused: torch.Tensor  # (B, 1, H, W) in [0, 1]
    logits: torch.Tensor  # (2B, 2): the classifier's modality logits of a then b
    discriminated: torch.Tensor | None  # (2B, 2): the frozen discriminator's logits of the transferred tokens
    flows: list[torch.Tensor]  # the ten per-level flows, a's and b's alternating, coarse to fine
    flow: torch.Tensor  # (B, 2, H, W): the integrated field that warps b onto a


class BSAFusionNet(nn.Module):
    """``forward(a, b)``: the fused image of a fixed ``a`` and a moving ``b``, any size (padded to multiples of 16
    and cropped back); ``run(a, b)``: every output the training losses need, on sizes that are multiples of 16."""

    def __init__(self, hidden: int, heads: int, mlp_dim: int, vit_blocks: int, transfer_blocks: int,
                 vit_dropout: float, encoder_channels: list[int], reg_channels: list[int],
                 fusion_channels: list[int], pos_size: int):
        super().__init__()
        if len(reg_channels) != LEVELS or len(fusion_channels) != LEVELS:
            raise ValueError(f"reg_channels and fusion_channels need {LEVELS} entries (one per x2 level from the "
                             f"16-px token grid), got {reg_channels} and {fusion_channels}")
        shallow, deep = encoder_channels
        self.encoder_shallow = restormer(1, shallow)
        self.encoder_deep = restormer(shallow, deep)
        self.embed = PatchEmbedding(deep, hidden, pos_size)
        self.classifier = TokenClassifier(hidden, heads, mlp_dim, vit_dropout, vit_blocks)
        self.transfer = CrossTokenTransfer(hidden, heads, mlp_dim, transfer_blocks)
        self.discriminator = TokenClassifier(hidden, heads, mlp_dim, vit_dropout, vit_blocks).requires_grad_(False)
        self.registration = StepwiseRegistration([hidden, *reg_channels])
        self.fusion = FusionDecoder(hidden, fusion_channels, shallow)
        # the weight of SSIM(F, warped b) in the fusion loss: last epoch's mean SSIM loss to b over the one to a
        self.register_buffer("ssim_balance", torch.ones(()))

    @torch.no_grad()
    def end_epoch(self, ssim_fixed: float, ssim_moving: float) -> None:
        """What the code does after every epoch: re-copy the discriminator, set the next epoch's SSIM balance."""
        self.discriminator.load_state_dict(self.classifier.state_dict())
        self.ssim_balance.fill_(ssim_moving / ssim_fixed)

    def run(self, a: torch.Tensor, b: torch.Tensor, discriminate: bool = False) -> BSAFusionOutput:
        n, (h, w) = len(a), a.shape[-2:]
        if h % PATCH or w % PATCH:
            raise ValueError(f"BSAFusion runs on sizes that are multiples of {PATCH}, got {h} x {w} (forward pads)")
        shallow = self.encoder_shallow(torch.cat((a, b)))  # one shared encoder: both images in one batch
        logits, cls, tokens = self.classifier(self.embed(self.encoder_deep(shallow)))
        moved_a, moved_b = self.transfer(tokens[:n], tokens[n:], cls[:n], cls[n:])

        def grid(t: torch.Tensor) -> torch.Tensor:  # the code's project(): tokens back to an (H/16, W/16) map
            return t.transpose(1, 2).reshape(len(t), -1, h // PATCH, w // PATCH)

        flows, flow = self.registration(grid(moved_a), grid(moved_b))
        grids = grid(tokens)
        fused = self.fusion(shallow[:n], shallow[n:], grids[:n], grids[n:], flow)
        discriminated = self.discriminator(torch.cat((moved_a, moved_b)))[0] if discriminate else None
        return BSAFusionOutput(fused, logits, discriminated, flows, flow)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(torch.cat((a, b), dim=1), PATCH)
        return self.run(padded[:, :1], padded[:, 1:]).fused[..., :h, :w]
