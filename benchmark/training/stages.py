"""The stages of the default recipes, for methods to reuse: a fusion objective, a segmentation objective.

Each returns a ``Stage`` whose epochs draw their batches from ``ctx`` (seeded per epoch) and set the learning
rate from a schedule ``lr(epoch, epochs)`` at the start of every epoch (one cosine by default), so that a
resumed run needs no scheduler state. Segmentation stages also score the validation split after every epoch
(``val_dice``), so that a collapse shows in ``train_log.csv`` while it happens.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from metrics.segmentation import confusion_matrix, scores_from_confusion

from .context import TrainContext
from .loop import Stage, cosine_lr, set_lr

Schedule = Callable[[int, int], float]
Monitor = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], dict[str, float]]


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


def cosine(base_lr: float, offset: int = 0, total: int | None = None) -> Schedule:
    """``lr(epoch, epochs)``: cosine annealing from ``base_lr`` to 1 % of it. With ``total``, one cosine over
    ``total`` epochs of which this stage is the part starting at ``offset`` (a schedule continued across stages)."""
    return lambda epoch, epochs: cosine_lr(base_lr, offset + epoch, epochs if total is None else total)


MONITORED_EPOCHS = 8


def monitored(epoch: int, epochs: int) -> bool:
    """Whether an epoch of a stage logs its diagnostics: about ``MONITORED_EPOCHS`` evenly spaced ones, the last
    included."""
    return epoch == epochs - 1 or epoch % max(1, round(epochs / MONITORED_EPOCHS)) == 0


def _schedule(lr: float | Schedule) -> Schedule:
    return cosine(lr) if isinstance(lr, (int, float)) else lr


def fusion_stage(ctx: TrainContext, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]], epochs: int,
                 lr: float | Schedule, *, batch_size: int | None = None, crop: int | None | str = "config",
                 grad_clip: float | None = None, monitor: Monitor | None = None, loader_key: int = 1000) -> Stage:
    """Train ``model`` on a label-free objective ``loss_fn(model, a, b, epoch=, step=) -> (loss, parts)``.

    Batches are random patches of ``training.fusion_patch`` (``crop``: another side, or None for whole images).
    ``monitor(model, a, b)`` adds diagnostics of the epoch's first batch to the log, at most ``MONITORED_EPOCHS``
    times per stage (they cost a few backward passes).
    """
    schedule = _schedule(lr)
    side = ctx.training.fusion_patch if crop == "config" else crop

    def run_epoch(local: int, total: int) -> dict[str, float]:
        set_lr(optimizer, schedule(local, total))
        model.train()
        mean = RunningMean()
        notes: dict[str, float] = {}
        for step, batch in enumerate(ctx.loader(loader_key + local, batch_size=batch_size, crop=side)):
            a, b = ctx.sources(batch)
            if monitor is not None and step == 0 and monitored(local, total):
                notes = monitor(model, a, b)
            with ctx.autocast():
                loss, parts = loss_fn(model, a, b, epoch=local, step=step)
            ctx.step(loss, optimizer, model, grad_clip)
            mean.add({"loss": loss.item(), **parts})
        return {**mean.result(), **notes, "lr": optimizer.param_groups[0]["lr"]}

    return Stage(name, epochs, run_epoch)


@torch.no_grad()
def validation_dice(ctx: TrainContext, predict: Callable[[dict], torch.Tensor]) -> dict[str, float]:
    """Mean Dice of NCR, ED and ET on the validation split, counts pooled over its slices (``val_dice``; empty
    when the run has no validation slices). ``predict(batch)`` returns logits."""
    data = ctx.dataset("val")
    if len(data) == 0:
        return {}
    confusion = np.zeros((4, 4), np.int64)
    for batch in DataLoader(data, batch_size=2 * ctx.training.batch_size, shuffle=False):
        with ctx.autocast():
            logits = predict(batch)
        confusion += confusion_matrix(logits.float().argmax(1).cpu().numpy().astype(np.uint8),
                                      batch["label"].numpy().astype(np.uint8))
    return {"val_dice": float(scores_from_confusion(confusion, empty_rule="nan")["mean_dice"])}


def segmentation_stage(ctx: TrainContext, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                       model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       make_input: Callable[[dict], torch.Tensor], epochs: int, lr: float | Schedule, *,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       batch_size: int | None = None, grad_clip: float | None = None, validate: bool = True) -> Stage:
    """Train a segmentation network: ``forward(make_input(batch))`` -> logits, ``loss_fn(logits, label)``
    (default: the follower's CE + weighted Dice); after each epoch, ``val_dice`` of the same forward."""
    schedule = _schedule(lr)
    loss_fn = loss_fn or ctx.seg_loss

    def predict(batch: dict) -> torch.Tensor:
        return forward(make_input(batch))

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
        model.eval()
        checked = validation_dice(ctx, predict) if validate else {}
        return {**mean.result(), **checked, "lr": optimizer.param_groups[0]["lr"]}

    return Stage(name, epochs, run_epoch)
