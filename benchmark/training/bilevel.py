"""Fuse4Seg's Algorithm 1, the default recipe of joint methods on BraTS (paper 3.2).

Stages (our choices where the paper is silent are marked):
- leader pre-training (ours, ``fusion_epochs``, on patches): the leader learns the physical losses alone, its MSE
  anchor pulling it to the deterministic physical prior ``method.prior`` (the average of the sources); the paper
  leaves the leader's initialisation open, and a random leader emits noise the warmed-up follower cannot read;
- stage 1, follower warm-up (``warmup_epochs``) with the leader frozen, on the frozen leader's fused image (ours:
  the paper's "deterministic physical prior"; the prior itself when there is no pre-training). The follower is
  sensitive to the small difference between the pre-trained leader's image and the prior (measured on the
  synthetic default, seed 0: warmed up on the prior, the follower scored validation Dice 0.21 on the prior and
  0.00 on the pre-trained leader's image, RMS difference 0.08), so it warms up on the images it will see when
  stage 2 starts;
- stage 2, the bi-level rollout (``bilevel_epochs``): per batch, K follower steps on D_tr and one leader step on
  D_val; an EMA of the leader is used for evaluation.

Each network follows ONE cosine schedule across its stages (the leader over pre-training + rollout, the follower
over warm-up + rollout), so the rollout continues where the warm-up left off instead of restarting at the full
rate.

Diagnostics logged per epoch (``train_log.csv``, plotted by the renderer): the fused image's correlation and MSE
to the prior (``corr_prior``, ``mse_prior``), each loss term, the share of the leader's gradient norm that comes
from each weighted term (``share_seg``, ``share_dec``, ``share_grad``, ``share_mse``; on the epoch's first batch)
and the follower's validation Dice (``val_dice``). The gradient shares cost a few backward passes, so they are
taken on about eight evenly spaced epochs of a stage (``stages.monitored``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..data.splits import partition_by_patient
from ..nn.functional import pearson_per_image
from .context import TrainContext
from .follower import follower_optimizer, follower_stage
from .loop import EMA, Stage, set_lr
from .stages import RunningMean, cosine, fusion_stage, monitored, validation_dice

if TYPE_CHECKING:
    from ..methods import JointMethod


def gradient_shares(module: torch.nn.Module, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of the total gradient norm (over ``module``'s parameters) that each weighted loss term contributes."""
    params = [p for p in module.parameters() if p.requires_grad]
    norms = {}
    for name, loss in terms.items():
        if not loss.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        norms[name] = math.sqrt(sum(float(g.float().square().sum()) for g in grads if g is not None))
    total = sum(norms.values())
    return {f"share_{name}": (norm / total if total > 0 else math.nan) for name, norm in norms.items()}


def leader_monitor(method: "JointMethod", ctx: TrainContext,
                   semantic: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Diagnostics of a leader batch: closeness to the prior and where the leader's gradient comes from.

    ``semantic(fused)``: the segmentation loss through the (frozen) follower, during the bi-level rollout.
    """

    def monitor(leader: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        with ctx.autocast():
            out = leader(a, b)
            terms = {name: weight * loss for name, (weight, loss) in method.physical_terms(out, a, b).items()}
            if semantic is not None:
                terms = {"seg": method.semantic_weight * semantic(out.fused), **terms}
        prior = method.prior(a, b)
        fused = out.fused.detach().float()
        return {"corr_prior": float(pearson_per_image(fused, prior).mean()),
                "mse_prior": float(F.mse_loss(fused, prior)), **gradient_shares(leader, terms)}

    return monitor


def bilevel_stages(method: "JointMethod", ctx: TrainContext, nets: dict[str, torch.nn.Module]) -> list[Stage]:
    leader, follower = nets["leader"], nets["follower"]
    t = ctx.training
    opt_l = ctx.track(method.configure_optimizer(leader, ctx, t.leader_lr), "leader")
    opt_f = ctx.track(follower_optimizer(ctx, follower), "follower")
    ema = ctx.track_ema(leader, t.ema_decay, "leader")
    leader_epochs, follower_epochs = t.fusion_epochs + t.bilevel_epochs, t.warmup_epochs + t.bilevel_epochs

    @torch.no_grad()
    def warmup_image(batch: dict) -> torch.Tensor:
        a, b = ctx.sources(batch)
        if t.fusion_epochs == 0:
            return method.prior(a, b)
        leader.eval()
        return leader(a, b).fused.float()

    return [
        fusion_stage(ctx, "leader_pretrain", leader, opt_l, method.fusion_loss, t.fusion_epochs,
                     cosine(t.leader_lr, 0, leader_epochs), monitor=leader_monitor(method, ctx)),
        follower_stage(ctx, "warmup", follower, opt_f, warmup_image, t.warmup_epochs,
                       cosine(t.follower_lr, 0, follower_epochs)),
        bilevel_stage(method, ctx, leader, follower, opt_l, opt_f, ema,
                      leader_lr=cosine(t.leader_lr, t.fusion_epochs, leader_epochs),
                      follower_lr=cosine(t.follower_lr, t.warmup_epochs, follower_epochs)),
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
            total = method.semantic_weight * seg + physical
        ctx.step(total, opt_l, leader)
    finally:
        follower.requires_grad_(True)
    return {"inner_seg_loss": inner.item(), "outer_seg_loss": seg.item(), "leader_loss": total.item(), **parts}


def bilevel_stage(method: "JointMethod", ctx: TrainContext, leader, follower, opt_l, opt_f, ema: EMA, *,
                  leader_lr, follower_lr) -> Stage:
    """Stage 2 of Algorithm 1: per batch, K follower steps on D_tr, then one leader step on D_val."""
    training = ctx.training

    def predict(batch: dict) -> torch.Tensor:
        return follower(leader(*ctx.sources(batch)).fused)

    def run_epoch(local: int, total: int) -> dict[str, float]:
        set_lr(opt_l, leader_lr(local, total))
        set_lr(opt_f, follower_lr(local, total))
        if local == 0:
            ema.reset(leader)  # average the bi-level leader, not its pre-training trajectory
        mean = RunningMean()
        notes: dict[str, float] = {}
        generator = torch.Generator().manual_seed(ctx.seed * 7919 + local)
        for step, batch in enumerate(ctx.patient_loader(3000 + local)):
            tr, val = partition_by_patient(batch["patient"], training.val_fraction, generator=generator)
            a, b = ctx.sources(batch)
            target = batch["label"].to(ctx.device)
            if step == 0 and monitored(local, total):
                idx = torch.as_tensor(val, device=ctx.device)
                follower.requires_grad_(False)
                notes = leader_monitor(method, ctx, lambda fused: ctx.seg_loss(follower(fused), target[idx]))(
                    leader, a[idx], b[idx])
                follower.requires_grad_(True)
            mean.add(bilevel_iteration(method, ctx, leader, follower, opt_l, opt_f, a, b, target, tr, val))
            ema.update(leader)
        leader.eval()
        follower.eval()
        checked = validation_dice(ctx, predict)
        return {**mean.result(), **notes, **checked, "lr": opt_l.param_groups[0]["lr"],
                "follower_lr": opt_f.param_groups[0]["lr"]}

    return Stage("bilevel", training.bilevel_epochs, run_epoch)
