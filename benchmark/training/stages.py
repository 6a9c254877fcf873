"""The stages of the default recipes, for methods to reuse: a fusion objective, a segmentation objective.

Each returns a ``Stage`` whose epochs draw their batches from ``ctx`` (seeded per epoch) and set the learning
rate from a schedule ``lr(epoch, epochs)`` at the start of every epoch (one cosine by default), so that a
resumed run needs no scheduler state.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch

from .context import TrainContext
from .loop import Stage, cosine_lr, set_lr

Schedule = Callable[[int, int], float]


class RunningMean:
    """Running means of named scalars over an epoch."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.sums[key] += float(value)
            self.counts[key] += 1

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def cosine(base_lr: float) -> Schedule:
    """``lr(epoch, epochs)``: cosine annealing from ``base_lr`` to 1 % of it over the stage."""
    return lambda epoch, epochs: cosine_lr(base_lr, epoch, epochs)


def fusion_stage(ctx: TrainContext, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]], epochs: int,
                 lr: float | Schedule, *, batch_size: int | None = None, transform=None,
                 grad_clip: float | None = None, loader_key: int = 1000) -> Stage:
    """Train ``model`` on a label-free objective ``loss_fn(model, a, b, epoch=, step=) -> (loss, parts)``."""
    schedule = cosine(lr) if isinstance(lr, (int, float)) else lr

    def run_epoch(local: int, total: int) -> dict[str, float]:
        set_lr(optimizer, schedule(local, total))
        model.train()
        mean = RunningMean()
        batches = ctx.loader(loader_key + local, batch_size=batch_size, transform=transform)
        for step, batch in enumerate(batches):
            a, b = ctx.sources(batch)
            with ctx.autocast():
                loss, parts = loss_fn(model, a, b, epoch=local, step=step)
            ctx.step(loss, optimizer, model, grad_clip)
            mean.add({"loss": loss.item(), **parts})
        return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

    return Stage(name, epochs, run_epoch)


def segmentation_stage(ctx: TrainContext, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                       model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       make_input: Callable[[dict], torch.Tensor], epochs: int, lr: float | Schedule, *,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       batch_size: int | None = None, grad_clip: float | None = None) -> Stage:
    """Train a segmentation network: ``forward(make_input(batch))`` -> logits, ``loss_fn(logits, label)``
    (default: the follower's CE + weighted Dice)."""
    schedule = cosine(lr) if isinstance(lr, (int, float)) else lr
    loss_fn = loss_fn or ctx.seg_loss

    def run_epoch(local: int, total: int) -> dict[str, float]:
        set_lr(optimizer, schedule(local, total))
        model.train()
        mean = RunningMean()
        for batch in ctx.loader(2000 + local, batch_size=batch_size):
            target = batch["label"].to(ctx.device)
            with torch.no_grad():
                x = make_input(batch)
            with ctx.autocast():
                loss = loss_fn(forward(x), target)
            ctx.step(loss, optimizer, model, grad_clip)
            mean.add({"seg_loss": loss.item()})
        return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

    return Stage(name, epochs, run_epoch)
