"""TransUNet's training recipe and fixed-size geometry, also used by CENet (whose trainer descends from it).

Both official trainers zoom every slice to the network's fixed side (labels by nearest neighbour), train with SGD
(momentum 0.9) whose rate decays per iteration as lr (1 - it / max_it)^power over all iterations, and predict on
the zoomed slice, zooming the prediction back. Here the zooms are bilinear for images and logits, nearest for
labels; a slice already at the network's side is left untouched.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F

from benchmark.methods import MultiChannelMethod
from benchmark.training.context import TrainContext
from benchmark.training.loop import Stage, set_lr
from benchmark.training.stages import RunningMean


def resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """Images (B, C, H, W) resized bilinearly to side x side."""
    if images.shape[-2:] == (side, side):
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def segment_at(model: torch.nn.Module, images: torch.Tensor, side: int) -> torch.Tensor:
    """Logits of ``images`` computed at side x side and resized (bilinear) back to the images' H, W."""
    logits = model(resize(images, side))
    if logits.shape[-2:] == images.shape[-2:]:
        return logits
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def poly_sgd_stage(ctx: TrainContext, model: torch.nn.Module, *, side: int,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], lr: float, momentum: float,
                   weight_decay: float, power: float, epochs: int | None) -> Stage:
    """``epochs`` epochs of SGD on ``loss_fn(float32 logits, labels)`` at side x side, poly decay per iteration.

    ``epochs`` None: the suite's multi-channel budget (``warmup_epochs + bilevel_epochs``, as the default
    multi-channel recipe), so that at the test scale every multi-channel row takes as many steps.
    """
    if epochs is None:
        epochs = ctx.training.warmup_epochs + ctx.training.bilevel_epochs
    optimizer = ctx.track(torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                          weight_decay=weight_decay), "segmenter")
    per_epoch = -(-len(ctx.dataset()) // ctx.training.batch_size)
    if ctx.training.max_batches_per_epoch is not None:
        per_epoch = min(per_epoch, ctx.training.max_batches_per_epoch)

    def run_epoch(epoch: int, total: int) -> dict[str, float]:
        model.train()
        mean = RunningMean()
        for step, batch in enumerate(ctx.loader(2000 + epoch)):
            set_lr(optimizer, lr * (1 - (epoch * per_epoch + step) / (total * per_epoch)) ** power)
            images = resize(batch["images"].to(ctx.device), side)
            target = batch["label"].to(ctx.device)
            if target.shape[-2:] != (side, side):
                target = F.interpolate(target[:, None].float(), size=(side, side), mode="nearest")[:, 0].long()
            with ctx.autocast():
                logits = model(images)
            loss = loss_fn(logits.float(), target)
            ctx.step(loss, optimizer, model)
            mean.add({"seg_loss": loss.item()})
        return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

    return Stage("segmentation", epochs, run_epoch)


class FixedSidePolySGDMethod(MultiChannelMethod):
    """A multi-channel method run at ``img_size`` x ``img_size`` and trained by :func:`poly_sgd_stage` (TransUNet,
    CENet); a subclass gives its loss and how a local encoder weight file (``weights: encoder``) is loaded."""

    @staticmethod
    @abstractmethod
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of float32 logits (B, C, side, side) and labels (B, side, side)."""

    @abstractmethod
    def load_encoder(self, model: torch.nn.Module, path) -> None:
        """Copy the local encoder weight file at ``path`` into ``model``."""

    def segment(self, nets, images):
        return segment_at(nets["segmenter"], images, self.hparams["img_size"])

    def stages(self, ctx, nets):
        model, h = nets["segmenter"], self.hparams
        path = self.weight_file("encoder")
        if path is not None:
            self.load_encoder(model, path)
        return [poly_sgd_stage(ctx, model, side=h["img_size"], loss_fn=self.loss, lr=h["lr"], momentum=h["momentum"],
                               weight_decay=h["weight_decay"], power=h["poly_power"], epochs=h["epochs"])]
