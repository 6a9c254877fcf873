"""The one shared segmentation follower (the Fuse4Seg follower, paper 3.4) and its recipe.

Every disjoint fusion + segmentation pipeline and Fuse4Seg itself segment with this network, built from the same
``follower`` configuration and trained with the same recipe (AdamW at ``follower_lr``, ``warmup_epochs +
bilevel_epochs`` epochs, CE + class-weighted Dice), so that Table 1 compares fused inputs rather than backbones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from metrics.segmentation import N_CLASSES

from ..nn.convnext_unet import SegmentationFollower
from ..record import FollowerRun
from .context import TrainContext
from .loop import Stage
from .stages import Schedule, segmentation_stage


def build_follower(network: dict[str, Any] | None = None, in_channels: int = 1,
                   seed: int | None = None) -> SegmentationFollower:
    """The shared follower; with ``seed``, initialised from its own generator seeded by the run's seed, so that
    every pipeline's follower starts from the same weights for a given seed, whatever was built before it (the
    tiny default follower's result depends on its initialisation as much as on its input)."""
    if seed is None:
        return SegmentationFollower(in_channels=in_channels, num_classes=N_CLASSES, **(network or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SegmentationFollower(in_channels=in_channels, num_classes=N_CLASSES, **(network or {}))


def follower_optimizer(ctx: TrainContext, follower: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(follower.parameters(), lr=ctx.training.follower_lr, weight_decay=ctx.training.weight_decay)


def follower_stage(ctx: TrainContext, name: str, follower: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   make_input: Callable[[dict], torch.Tensor], epochs: int, lr: Schedule | None = None) -> Stage:
    """The follower's recipe on inputs ``make_input(batch)``: one cosine schedule from ``follower_lr`` (or ``lr``,
    e.g. the part of one cosine that spans several stages)."""
    return segmentation_stage(ctx, name, follower, follower, optimizer, make_input, epochs,
                              lr or ctx.training.follower_lr)


def follower_training_stages(ctx: TrainContext, follower: torch.nn.Module) -> list[Stage]:
    """A disjoint pipeline's follower on its fused store: the follower's whole budget in one stage."""
    optimizer = ctx.track(follower_optimizer(ctx, follower), "follower")
    epochs = ctx.training.warmup_epochs + ctx.training.bilevel_epochs
    return [follower_stage(ctx, "follower", follower, optimizer, lambda b: b["images"].to(ctx.device), epochs)]


def follower_run_context(run: FollowerRun, fused_store: Path, out_dir: Path, **kwargs) -> TrainContext:
    return TrainContext(run.follower.training, run.seed, fused_store, out_dir, **kwargs)
