"""TFS-Diff (Xu et al., MICCAI 2024): an SR3 conditional diffusion model that generates the fused image.

Network (``methods/_tfs_diff_net.py``): SR3's UNet as TFS-Diff's medical config has it: inner width 64,
multipliers 1-2-4-8-8, 2 ResBlocks per level, attention at the fourth level (resolution 16 of 128), dropout 0.2,
GroupNorm 32, and TFS-Diff's squeeze-excitation "channel attention" on the input [A, B, x_t] (the two sources in
[-1, 1] concatenated with the noisy image; scale factor 1: the conditions are the sources themselves).

Training, as its ``sr3_modules/diffusion.py``: the 4000-step linear schedule (1e-6 to 1e-2); one timestep t per
batch, each image's noise level sqrt(alpha_bar) drawn uniformly between those of t - 1 and t (SR3's continuous
conditioning); loss L1-sum(noise, prediction) + SSIM loss(x_start, prediction) as the code writes it (the SSIM
term compares the clean target with the predicted noise; kornia 0.2's ``losses.SSIM(11, reduction='mean')``, the
call CDDFuse makes too, so both use ``methods/_cddfuse_losses.ssim_loss``); Adam at 1e-4
(``fusion_medical_sr3_16_128.json``), no EMA (its EMA is marked "not used"), no gradient clipping, random
horizontal flips (its dataset calls SR3's ``transform_augment``); 1e6 iterations at the run's batch size (24, as
the reference, unless the config sets it).

Declared deviations:
- pseudo-target: the repository trains on ``hr_*`` "ground truth" fused images it does not define. Ours is a fixed
  classical fusion of the two sources, Laplacian-pyramid fusion (Burt & Kolczynski: larger-magnitude detail
  coefficient at each of 4 levels, mean of the coarsest approximations; ``laplacian_pyramid_fusion``), computed
  on the fly. Why: it is the traditional reference rule of medical image fusion, it keeps the edges and contrast
  of both sources where the average halves them, it is deterministic and parameter-free, and it is none of the
  compared methods, so TFS-Diff learns no other row's output;
- two grey conditions and one grey output: the reference feeds three RGB images (12 input channels, 3 output).
  Stores hold luminance, so ours takes 3 channels [A, B, x_t] and predicts 1. Count: 97,804,619, i.e. 2,312 fewer
  than the reference's 97,806,931 for two grey conditions and 3 outputs (stem conv 2 x 576, output conv
  2 x 577, squeeze-excitation 6). 3 // 4 = 0 hidden units would make the squeeze-excitation a constant gate; it
  keeps one hidden unit, as the reference's 5-channel input (5 // 4 = 1) has;
- sampling: DDIM, eta 0, 100 steps (test_config: 5) on the training schedule's "trailing" grid (diffusers'
  ``DDIMScheduler``; x0 clamped to [-1, 1] and the noise recomputed from it, as guided-diffusion's DDIM), instead
  of the reference's 4000 ancestral steps; output (x0 + 1) / 2 (SR3's [-1, 1] -> [0, 1]), every slice from the
  same noise seeded by the run's seed;
- size: inputs are padded (reflect) to a multiple of 16 (the UNet's stride) and the output cropped back;
- budget: training runs ``iterations`` optimiser steps on whole slices; the run's ``fusion_epochs`` and
  ``fusion_patch`` (other fusion methods' budget and crops) do not apply (``methods/_diffusion_common.py``);
- test_config: inner width 8, multipliers 1-2-2, 1 ResBlock, attention only in the middle (1/4 resolution),
  GroupNorm 4, 10 training iterations, 5 DDIM steps.
"""

import torch

from benchmark.methods import FusionMethod
from benchmark.nn.functional import float32_region
from benchmark.nn.restormer import pad_to_multiple
from methods._cddfuse_losses import ssim_loss  # kornia 0.2's SSIM(11, reduction='mean'): CDDFuse makes the same call
from methods._diffusion_common import iteration_stage, sampling_seed, start_noise
from methods._tfs_diff_net import SR3UNet, laplacian_pyramid_fusion


class Method(FusionMethod):
    kind = "fusion"
    display_name = "TFS-Diff"
    paper_name = "TFS-Diff"
    datasets = ("brats", "paired")
    hyperparameters = {
        "inner_channel": 64,
        "channel_mults": [1, 2, 4, 8, 8],
        "res_blocks": 2,
        "attention_levels": [3],  # the reference's attn_res 16 at image_size 128
        "dropout": 0.2,
        "norm_groups": 32,
        "se_ratio": 4,
        "train_timesteps": 4000,
        "beta_start": 1e-6,
        "beta_end": 1e-2,
        "iterations": 1_000_000,
        "lr": 1e-4,
        "ssim_window": 11,
        "target_levels": 4,  # pseudo-target: Laplacian-pyramid fusion levels
        "sampling_steps": 100,
    }
    test_config = {"inner_channel": 8, "channel_mults": [1, 2, 2], "res_blocks": 1, "attention_levels": [],
                   "norm_groups": 4, "iterations": 10, "sampling_steps": 5}
    training = {"batch_size": 24, "grad_clip": 0.0}
    requires = {"diffusers": "diffusers>=0.30"}
    reference = {
        "repository": "https://github.com/XylonXu01/TFS-Diff",
        "commit": "e53cf07",
        "parameters": 97806931,
        "notes": "reference: 2 grey conditions + 3 output channels; ours 1 output channel (-2,312: stem, output "
                 "conv, SE); pseudo-target = Laplacian-pyramid fusion; DDIM 100 steps instead of 4000",
    }

    def build(self):
        h = self.hparams
        return SR3UNet(3, 1, h["inner_channel"], tuple(h["channel_mults"]), h["res_blocks"],
                       tuple(h["attention_levels"]), h["dropout"], h["norm_groups"], h["se_ratio"])

    def _scheduler(self):
        from diffusers import DDIMScheduler  # imported where used: building the network needs no diffusers

        h = self.hparams
        return DDIMScheduler(num_train_timesteps=h["train_timesteps"], beta_start=h["beta_start"],
                             beta_end=h["beta_end"], beta_schedule="linear", clip_sample=True,
                             set_alpha_to_one=True, timestep_spacing="trailing")

    def stages(self, ctx, nets):
        net, h = nets["fusion"], self.hparams
        # sqrt(alpha_bar) before each step: levels[t] for t = 0..T, levels[0] = 1 (SR3's sqrt_alphas_cumprod_prev)
        levels = torch.cat([torch.ones(1), self._scheduler().alphas_cumprod]).sqrt().to(ctx.device)
        optimizer = ctx.track(torch.optim.Adam(net.parameters(), lr=h["lr"]), "fusion")

        def loss_fn(a, b, generator):
            with float32_region(a):  # target and losses in float32 under AMP
                target = laplacian_pyramid_fusion(a, b, h["target_levels"]) * 2 - 1
            t = int(torch.randint(1, h["train_timesteps"] + 1, (1,), generator=generator, device=ctx.device))
            u = torch.rand(len(a), generator=generator, device=ctx.device)
            level = levels[t - 1] + (levels[t] - levels[t - 1]) * u
            noise = torch.randn(target.shape, generator=generator, device=ctx.device)
            noisy = level[:, None, None, None] * target + (1 - level[:, None, None, None] ** 2).sqrt() * noise
            predicted = net(torch.cat([a * 2 - 1, b * 2 - 1, noisy], dim=1), level)
            with float32_region(a):
                l1 = (predicted.float() - noise).abs().sum()
                ssim = ssim_loss(target, predicted.float(), h["ssim_window"])
            return l1 + ssim, {"l1_sum": l1.item(), "ssim": ssim.item()}

        return [iteration_stage(ctx, "diffusion", net, optimizer, loss_fn, h["iterations"])]

    def fuse(self, nets, a, b):
        net, h = nets["fusion"], self.hparams
        stride = 2 ** (len(h["channel_mults"]) - 1)
        conditions, size = pad_to_multiple(torch.cat([a, b], dim=1) * 2 - 1, stride)
        scheduler = self._scheduler()
        scheduler.set_timesteps(h["sampling_steps"])
        levels = scheduler.alphas_cumprod.sqrt()
        x = start_noise(conditions[:, :1], sampling_seed(self))
        with torch.no_grad():
            for t in scheduler.timesteps:
                level = levels[t].to(x.device).expand(len(x))
                eps = net(torch.cat([conditions, x], dim=1), level)
                x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        return ((x[..., :size[0], :size[1]].clamp(-1, 1) + 1) / 2).float()
