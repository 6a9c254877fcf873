"""Fuse4Seg's Algorithm 1, the default recipe of joint methods on BraTS (paper 3.2).

Stages: the leader learns the physical losses alone (``fusion_epochs``; our choice, the paper leaves the leader's
initialisation open and a random leader emits noise the warmed-up follower cannot read), the follower warms up on
the average prior (stage 1, ``warmup_epochs``), then the bi-level rollout (stage 2, ``bilevel_epochs``): per batch,
K follower steps on D_tr and one leader step on D_val, an EMA of the leader used for evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..data.splits import partition_by_patient
from .context import TrainContext
from .follower import follower_optimizer, follower_stage
from .loop import EMA, Stage, cosine_lr, set_lr
from .stages import RunningMean, fusion_stage

if TYPE_CHECKING:
    from ..methods import JointMethod


def average_prior(ctx: TrainContext, batch: dict) -> torch.Tensor:
    a, b = ctx.sources(batch)
    return 0.5 * (a + b)


def bilevel_stages(method: "JointMethod", ctx: TrainContext, nets: dict[str, torch.nn.Module]) -> list[Stage]:
    leader, follower = nets["leader"], nets["follower"]
    opt_l = ctx.track(method.configure_optimizer(leader, ctx, ctx.training.leader_lr), "leader")
    opt_f = ctx.track(follower_optimizer(ctx, follower), "follower")
    ema = ctx.track_ema(leader, ctx.training.ema_decay, "leader")
    return [
        fusion_stage(ctx, "leader_pretrain", leader, opt_l, method.fusion_loss, ctx.training.fusion_epochs,
                     ctx.training.leader_lr),
        follower_stage(ctx, "warmup", follower, opt_f, lambda batch: average_prior(ctx, batch),
                       ctx.training.warmup_epochs),
        bilevel_stage(method, ctx, leader, follower, opt_l, opt_f, ema),
    ]


def bilevel_iteration(method: "JointMethod", ctx: TrainContext, leader, follower, opt_l, opt_f, a, b, target, tr,
                      val) -> dict[str, float]:
    """One outer iteration of Algorithm 1 on a batch split at patient level into ``tr`` and ``val``.

    Inner loop: K follower steps on D_tr with the leader frozen. Outer step: one leader step on D_val,
    the segmentation loss back-propagated through the just-adapted, frozen follower plus the physical
    regularisers. The follower never sees D_val's labels; the leader's gradient comes from D_val alone.
    """
    device = ctx.device
    tr = torch.as_tensor(tr, device=device)
    val = torch.as_tensor(val, device=device)
    leader.eval()
    with torch.no_grad(), ctx.autocast():
        fused_tr = leader(a[tr], b[tr]).fused.float()
    follower.train()
    for _ in range(ctx.training.inner_steps):
        with ctx.autocast():
            inner = ctx.seg_loss(follower(fused_tr), target[tr])
        ctx.step(inner, opt_f, follower)
    leader.train()
    follower.eval()
    follower.requires_grad_(False)
    try:
        with ctx.autocast():
            out = leader(a[val], b[val])
            seg = ctx.seg_loss(follower(out.fused), target[val])
            physical, parts = method.physical_loss(out, a[val], b[val])
            total = method.hparams["w_seg"] * seg + physical
        ctx.step(total, opt_l, leader)
    finally:
        follower.requires_grad_(True)
    return {"inner_seg_loss": inner.item(), "outer_seg_loss": seg.item(), "leader_loss": total.item(), **parts}


def bilevel_stage(method: "JointMethod", ctx: TrainContext, leader, follower, opt_l, opt_f, ema: EMA) -> Stage:
    """Stage 2 of Algorithm 1: per batch, K follower steps on D_tr, then one leader step on D_val."""
    training = ctx.training

    def run_epoch(local: int, total: int) -> dict[str, float]:
        set_lr(opt_l, cosine_lr(training.leader_lr, local, total))
        set_lr(opt_f, cosine_lr(training.follower_lr, local, total))
        if local == 0:
            ema.reset(leader)  # average the bi-level leader, not its pre-training trajectory
        mean = RunningMean()
        generator = torch.Generator().manual_seed(ctx.seed * 7919 + local)
        for batch in ctx.patient_loader(3000 + local):
            tr, val = partition_by_patient(batch["patient"], training.val_fraction, generator=generator)
            a, b = ctx.sources(batch)
            target = batch["label"].to(ctx.device)
            mean.add(bilevel_iteration(method, ctx, leader, follower, opt_l, opt_f, a, b, target, tr, val))
            ema.update(leader)
        return {**mean.result(), "lr": opt_l.param_groups[0]["lr"]}

    return Stage("bilevel", training.bilevel_epochs, run_epoch)
