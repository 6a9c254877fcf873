"""What the two diffusion baselines (DDFM, TFS-Diff) share: a training stage counted in iterations, and seeded noise.

Diffusion recipes are given in iterations (SR3/TFS-Diff: 1e6), not epochs: ``iteration_stage`` turns an iteration
budget into as many epochs of the run's loader as it takes (each checkpointed and resumable), with a constant
learning rate and random horizontal flips (DDPM, SR3), the flips, noise and timesteps of each epoch drawn from a
generator seeded by the run's seed and the epoch. Sampling starts every slice from the same seeded noise, as DDFM
re-seeds before each image, so a slice's fused image does not depend on the batch it was fused in.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from benchmark.training.loop import EMA, Stage
from benchmark.training.stages import RunningMean

# loss_fn(a, b, generator) -> (loss, parts to log); a, b: the run's sources (B, 1, H, W) in [0, 1]
DenoiserLoss = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


def batches_per_epoch(ctx) -> int:
    """Batches one pass of the run's loader yields (the training split, capped by ``max_batches_per_epoch``)."""
    n = math.ceil(len(ctx.dataset()) / ctx.training.batch_size)
    cap = ctx.training.max_batches_per_epoch
    return max(1, min(n, cap) if cap else n)


def iteration_stage(ctx, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    loss_fn: DenoiserLoss, iterations: int, *, ema: EMA | None = None,
                    loader_key: int = 3000) -> Stage:
    """``iterations`` optimiser steps of ``loss_fn`` on randomly mirrored batches of the run's loader (whole slices:
    the samplers generate whole slices); ``ema`` follows every step."""
    per_epoch = batches_per_epoch(ctx)

    def run_epoch(local: int, total: int) -> dict[str, float]:
        model.train()
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed * 1_000_003 + loader_key + local)
        mean = RunningMean()
        for step, batch in enumerate(ctx.loader(loader_key + local)):
            if local * per_epoch + step >= iterations:
                break
            a, b = random_hflip(*ctx.sources(batch), generator=generator)
            with ctx.autocast():
                loss, parts = loss_fn(a, b, generator)
            ctx.step(loss, optimizer, model)
            if ema is not None:
                ema.update(model)
            mean.add({"loss": loss.item(), **parts})
        return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

    return Stage(name, math.ceil(iterations / per_epoch), run_epoch)


def random_hflip(a: torch.Tensor, b: torch.Tensor, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair mirrored left-right with probability 1/2, both sources alike (DDPM's and SR3's augmentation)."""
    flip = (torch.rand(len(a), generator=generator, device=a.device) < 0.5)[:, None, None, None]
    return torch.where(flip, a.flip(-1), a), torch.where(flip, b.flip(-1), b)


def sampling_seed(method) -> int:
    """The run's seed (fusion of a trained run), 0 for a method used outside a run (contract tests)."""
    return method.record.seed if method.record is not None else 0


def start_noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    """N(0, I) of ``like``'s shape, the same draw for every slice of the batch (seeded on the CPU: any device)."""
    noise = torch.randn((1, *like.shape[1:]), generator=torch.Generator().manual_seed(seed))
    return noise.expand_as(like).contiguous().to(like.device)
