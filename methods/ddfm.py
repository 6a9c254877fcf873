"""DDFM (Zhao et al., ICCV 2023) with an in-domain prior: DDFM's EM + DDIM sampling on a DDPM trained here.

DDFM needs no fusion training: it samples an unconditional DDPM and, at every DDIM step, replaces the model's x0
estimate by one EM step of a hierarchical Bayesian fusion model against the two sources, then re-injects it
(``methods/_ddfm_sampler.py``). Its prior is OpenAI's ImageNet 256 x 256 unconditional DDPM (552.8 M parameters),
which cannot be downloaded here, so this row trains its own prior: an unconditional single-channel DDPM on the
dataset's training slices, each modality a separate image (never pairs), DDPM's L_simple (noise MSE) on the
1000-step linear schedule (1e-4 to 0.02) that DDFM samples with.

Prior network (diffusers ``UNet2DModel``): the DDPM architecture of Ho et al. for 256 x 256 unconditional images
(LSUN / CelebA-HQ; diffusers' ``google/ddpm-*-256``): widths 128-128-256-256-512-512, 2 ResBlocks per level,
single-head attention at 16 x 16 and in the middle block, 113.7 M parameters. Why: it is the published pixel-space
DDPM of this resolution from which guided-diffusion's ImageNet model descends, it downsamples by 32 like DDFM's
prior (so DDFM's multiple-of-32 input rule is unchanged), and a single grey channel of one domain, learnt from
thousands of slices, does not need the 5x larger model made for 1.28 M colour images of 1000 classes. Its recipe
is DDPM's for these models: Adam at 2e-5, gradient clipping at 1, random horizontal flips, EMA 0.9999 (the
sampler uses the EMA weights); 500 k iterations at the run's batch size (DDPM's CelebA-HQ: 0.5 M).

Sampling, as DDFM's ``sample.py``: sources scaled to [-1, 1], 100 DDIM steps (eta 0) respaced from 1000, EM with
lambda 0.5 and rho 0.001, the result min-max normalised to [0, 1] per image.

Declared deviations:
- the prior: trained in-domain (above) instead of OpenAI's ImageNet checkpoint, another (smaller) UNet;
  DDPM's 5000-step learning-rate warm-up is left out;
- sources: DDFM's EM model keeps the fused intensity close to I and its gradients close to V (the paper's
  infrared and visible); I = the functional / second source (SPECT, PET, GFP; FLAIR on BraTS), V = the anatomical
  / first one (MRI, PC; T1ce). The official ``sample.py`` reads I from its ``vi/`` folder and V from ``ir/``;
- size: the official code crops the input to a multiple of 32; we pad (reflect) to a multiple of the prior's
  stride (32 at full size), sample, and crop back, so every pixel of the input gets a fused value;
- the EM step's tau averages are taken per image (the official code has one image per batch);
- seed: the run's seed (DDFM fixes 3407); every slice starts from the same seeded noise, as DDFM re-seeds before
  each image;
- budget: training runs ``iterations`` optimiser steps on whole slices; the run's ``fusion_epochs`` and
  ``fusion_patch`` (other fusion methods' budget and crops) do not apply (``methods/_diffusion_common.py``);
- test_config: a 3-level UNet of widths 8-16-16 (attention at 1/4 resolution), 10 training iterations, 5 DDIM
  steps.
"""

import torch

from benchmark.methods import FusionMethod
from benchmark.nn.functional import minmax_per_image
from benchmark.nn.restormer import pad_to_multiple
from methods._ddfm_sampler import ddfm_sample
from methods._diffusion_common import iteration_stage, sampling_seed, start_noise


class Method(FusionMethod):
    kind = "fusion"
    display_name = "DDFM (in-domain prior)"
    paper_name = "DDFM"
    datasets = ("brats", "paired")
    hyperparameters = {
        "channels": [128, 128, 256, 256, 512, 512],  # the prior UNet (DDPM 256 x 256)
        "layers_per_block": 2,
        "attention_levels": [4],  # 16 x 16 at 256 x 256
        "norm_groups": 32,
        "dropout": 0.0,
        "train_timesteps": 1000,  # linear betas 1e-4 .. 0.02 (DDFM's prior)
        "iterations": 500_000,
        "lr": 2e-5,
        "ema_decay": 0.9999,
        "sampling_steps": 100,
        "lamb": 0.5,
        "rho": 0.001,
    }
    test_config = {"channels": [8, 16, 16], "layers_per_block": 1, "attention_levels": [2], "norm_groups": 4,
                   "iterations": 10, "ema_decay": 0.9, "sampling_steps": 5}
    training = {"grad_clip": 1.0}
    requires = {"diffusers": "diffusers>=0.30"}
    reference = {
        "repository": "https://github.com/Zhaozixiang1228/MMIF-DDFM",
        "commit": "589f5cb",
        "parameters": 552814086,
        "notes": "reference = OpenAI's ImageNet 256x256 unconditional prior, not downloadable here; ours is an "
                 "in-domain single-channel DDPM-256 UNet (113.7 M) trained on the run's slices; EM + DDIM "
                 "sampling as DDFM's",
    }

    def build(self):
        from diffusers import UNet2DModel

        h = self.hparams
        levels = range(len(h["channels"]))
        return UNet2DModel(
            in_channels=1, out_channels=1, block_out_channels=tuple(h["channels"]),
            down_block_types=tuple("AttnDownBlock2D" if i in h["attention_levels"] else "DownBlock2D" for i in levels),
            up_block_types=tuple("AttnUpBlock2D" if i in h["attention_levels"] else "UpBlock2D"
                                 for i in reversed(levels)),
            layers_per_block=h["layers_per_block"], attention_head_dim=None, norm_num_groups=h["norm_groups"],
            dropout=h["dropout"])

    def _schedule(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(num_train_timesteps=self.hparams["train_timesteps"], beta_schedule="linear",
                             beta_start=1e-4, beta_end=0.02)

    def stages(self, ctx, nets):
        prior, h = nets["fusion"], self.hparams
        scheduler = self._schedule()
        optimizer = ctx.track(torch.optim.Adam(prior.parameters(), lr=h["lr"]), "fusion")
        ema = ctx.track_ema(prior, h["ema_decay"], "fusion")

        def loss_fn(a, b, generator):
            x0 = torch.cat([a, b]) * 2 - 1  # every modality is an image of the prior's domain
            t = torch.randint(0, h["train_timesteps"], (len(x0),), generator=generator, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
            predicted = prior(scheduler.add_noise(x0, noise, t), t).sample
            return torch.nn.functional.mse_loss(predicted.float(), noise), {}

        return [iteration_stage(ctx, "prior", prior, optimizer, loss_fn, h["iterations"], ema=ema)]

    def finish(self, ctx, nets):
        ctx.state.emas["fusion"].copy_to(nets["fusion"])  # DDFM samples with the EMA prior

    def fuse(self, nets, a, b):
        h = self.hparams
        prior = nets["fusion"]
        stride = 2 ** (len(h["channels"]) - 1)
        v, size = pad_to_multiple(a * 2 - 1, stride)
        i, _ = pad_to_multiple(b * 2 - 1, stride)
        noise = start_noise(i, sampling_seed(self))
        sample = ddfm_sample(lambda x, t: prior(x, t).sample, self._schedule().alphas_cumprod, i, v, noise,
                             h["sampling_steps"], h["lamb"], h["rho"])
        return minmax_per_image(sample[..., :size[0], :size[1]])
