"""BSAFusion's training objective and synthetic misalignment, written from the official code (slrl123/BSAFusion
@c982182: ``utils_2d/loss.py``, ``utils_2d/warp.py``, ``dataset/BrainDataset_2D.py``).

``bsafusion_loss`` runs in float32 with autocast off. Equivalents written here instead of the code's dependencies:
``ssim_loss`` is monai 1.3's ``SSIMLoss(spatial_dims=2)``; the elastic field is kornia's ``gaussian_blur2d`` of
uniform noise (reflect border) as in the code's ``ImageTransform_1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.training.losses import gradient_loss, intensity_loss

from ._bsafusion_net import BSAFusionOutput, warp

DEFORMATION_GRID = 256  # the code draws its field on its 256 x 256 training images; we resize it to the slice


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    return g / g.sum()


def ssim_loss(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """monai's SSIMLoss (data range 1): 1 - the mean of the SSIM map over valid 11 x 11 Gaussian windows
    (sigma 1.5, no padding, no covariance correction; k1 = 0.01, k2 = 0.03) per image, averaged over the batch."""
    c = x.shape[1]
    g = _gaussian(size, sigma, x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, size, size)

    def blur(t):
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * (2 * cov + c2) / (var_x + var_y + c2)
    return (1 - ssim.flatten(1).mean(1)).mean()


def smoothness(flow: torch.Tensor) -> torch.Tensor:
    """The code's ``r_loss``: (mean squared vertical + mean squared horizontal forward difference) / 3."""
    dy = flow[:, :, 1:] - flow[:, :, :-1]
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    return (dx.square().mean() + dy.square().mean()) / 3.0


def flow_loss(flows: list[torch.Tensor], flow: torch.Tensor) -> torch.Tensor:
    """Multi-level smoothness as the code computes it: for i = 0..4, 10^(i-4) * (r(flows[i]) + r(flows[i+1])),
    plus r(integrated field). The code's indices pair consecutive flows, so flows[0..5] (levels H/16 to H/4) are
    regularised and the H/2 and full-size flows only through the field; reproduced as written."""
    total = smoothness(flow)
    for i in range(len(flows) // 2):
        total = total + 10.0 ** (i - 4) * (smoothness(flows[i]) + smoothness(flows[i + 1]))
    return total


def _smoothing_matrix(size: int, kernel: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(size, 256): a Gaussian blur of a 256-sample signal (reflect border, as kornia's ``gaussian_blur2d``)
    followed by its linear resize to ``size`` samples (align_corners=True), as one matrix."""
    grid, pad = DEFORMATION_GRID, kernel // 2
    eye = torch.eye(grid, device=device)
    blur = F.conv1d(F.pad(eye[:, None], (pad, pad), mode="reflect"), _gaussian(kernel, sigma, device).view(1, 1, -1))
    return F.interpolate(blur.transpose(0, 1), size=size, mode="linear", align_corners=True)[0].T


def synthetic_flow(n: int, size: tuple[int, int], generator: torch.Generator, *, kernel: int, sigma: float,
                   translate: float, device: torch.device) -> torch.Tensor:
    """The code's synthetic misalignment as a pixel flow (n, 2, H, W) for ``warp``: uniform noise in [-1, 1] on a
    256 x 256 grid blurred by a Gaussian (``kernel`` taps, ``sigma``, reflect border), plus a random translation
    in [-translate, translate] per image, in normalised units; times 256 as in the code, i.e. the same fraction
    of the image, once resized to H x W (so times H and W in pixels). The separable blur and the bilinear resize
    are applied as two small matrices (the same linear map as blurring then resizing the whole grid, cheaper)."""
    h, w = size
    with torch.autocast(device_type=device.type, enabled=False):
        noise = torch.rand(n, 2, DEFORMATION_GRID, DEFORMATION_GRID, generator=generator).to(device) * 2 - 1
        shift = (torch.rand(n, 2, 1, 1, generator=generator).to(device) * 2 - 1) * translate
        rows = _smoothing_matrix(h, kernel, sigma, device)
        cols = _smoothing_matrix(w, kernel, sigma, device)
        field = rows @ noise @ cols.T + shift
    return field * torch.tensor([w, h], device=device, dtype=field.dtype).view(1, 2, 1, 1)


MODALITY_TARGETS = ((0.0, 1.0), (1.0, 0.0))  # the code's labels: the fixed image (MRI) is class 1, the moving 0


def bsafusion_loss(out: BSAFusionOutput, fixed: torch.Tensor, moving: torch.Tensor, aligned: torch.Tensor,
                   ssim_balance: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The code's ``regFusion_loss`` (all five terms weighted 1) for a fixed image, the deformed moving image the
    network saw, and the moving image before the deformation (the registration target).

    - cls: CE of the classifier's logits to the modality labels, summed over the two images;
    - transfer: CE of the frozen discriminator's logits of the transferred tokens to [0.5, 0.5], summed;
    - flow: ``flow_loss``;
    - fusion: SSIM(F, fixed) + balance * SSIM(F, warped) + 0.5 L1(F, max(fixed, warped)) + Sobel-max gradient L1,
      with ``warped`` the moving image warped by the field;
    - reg: SSIM(aligned, warped) + L1(aligned, warped).
    """
    with torch.autocast(device_type=fixed.device.type, enabled=False):
        fused, flows, flow = out.fused.float(), [f.float() for f in out.flows], out.flow.float()
        fixed, moving, aligned = fixed.float(), moving.float(), aligned.float()
        n = len(fixed)
        labels = torch.tensor(MODALITY_TARGETS, device=fixed.device).repeat_interleave(n, dim=0)
        half = torch.full_like(labels, 0.5)
        # the mean over both halves, times 2: the code's sum of one CE per image
        cls = 2 * F.cross_entropy(out.logits.float(), labels)
        transfer = 2 * F.cross_entropy(out.discriminated.float(), half)
        smooth = flow_loss(flows, flow)
        warped = warp(moving, flow, "border")
        ssim_fixed, ssim_moving = ssim_loss(fused, fixed), ssim_loss(fused, warped)
        fusion = (ssim_fixed + ssim_balance * ssim_moving + 0.5 * intensity_loss(fused, fixed, warped)
                  + gradient_loss(fused, fixed, warped))
        reg = ssim_loss(aligned, warped) + F.l1_loss(aligned, warped)
        total = cls + transfer + smooth + fusion + reg
        parts = {"cls": cls, "transfer": transfer, "flow": smooth, "fusion": fusion, "reg": reg,
                 "ssim_fixed": ssim_fixed, "ssim_moving": ssim_moving}
        return total, {k: v.detach() for k, v in parts.items()}
