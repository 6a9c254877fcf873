"""CDDFuse (Zhao et al., CVPR 2023): correlation-driven dual-branch feature decomposition, with its own recipe.

Network (``methods/_cddfuse_net.py``): CDDFuse's shared Restormer encoder with a Lite-Transformer base branch and
an INN detail branch, base / detail fusion layers, Restormer decoder; 1,188,272 parameters at full size, as the
official ``net.py``.

Recipe (``train.py`` of MMIF-CDDFuse @fd8da1f), a = the anatomical source (CDDFuse's "VIS": MRI in its
``test_MIF.py``; BraTS' first modality, PC for GFP-PC), b = the functional one ("IR": PET / SPECT, GFP; BraTS'
second modality):
- Phase I (``phase1_epochs`` = 40): reconstruct each source from its own features:
  5 SSIM(a, a_hat) + MSE(a, a_hat) + 5 SSIM(b, b_hat) + MSE(b, b_hat) + 2 L_dec + 5 L1(grad a, grad a_hat), the
  gradient term on a only as the code has it (kornia's ``SpatialGradient``); only encoder and decoder train.
- Phase II (``phase2_epochs`` = 80): fuse: L1(F, max(a, b)) + 10 L1(Sobel F, max(Sobel a, Sobel b)) + 2 L_dec.
- L_dec = CC(D_a, D_b)^2 / (1.01 + CC(B_a, B_b)) (``benchmark.training.losses.decomposition_loss``).
- Adam (lr 1e-4, weight decay 0); StepLR(20, 0.5) with a 1e-6 floor, stepped every epoch for the encoder and
  decoder and only in phase II for the fusion layers (one optimiser, two parameter groups: the same update as
  CDDFuse's four Adams); each sub-network's gradient clipped to norm ``training.grad_clip`` (0.01) on its own.
- Batch 8 of random ``training.fusion_patch`` (128) square patches, the whole extent along a shorter axis.
- Inference: the decoder's sigmoid output min-max normalised per image, as ``test_MIF.py``.
SSIM, spatial gradient and Sobel are written after kornia 0.2.0 / CDDFuse (``methods/_cddfuse_losses.py``).

Declared differences from the official code:
- No image residual in the decoder, in training as at inference (CDDFuse's MIF checkpoint decodes with
  ``inp_img=None``; its ``train.py`` adds the visible image to the decoder output in both phases).
- Patches: random crops drawn each epoch, instead of a fixed stride-200 grid of 128 x 128 patches from which
  low-contrast ones are dropped (``dataprocessing.py``); no low-contrast filter.
- Epochs count the batches of our stores (``training.max_batches_per_epoch`` may cap them), not of MSRS.
"""

import torch
import torch.nn.functional as F

from benchmark.methods import FusionMethod
from benchmark.nn.functional import minmax_per_image
from benchmark.training.losses import decomposition_loss, intensity_loss
from benchmark.training.loop import Stage, raise_if_nonfinite
from benchmark.training.stages import RunningMean


class Method(FusionMethod):
    kind = "fusion"
    display_name = "CDDFuse"
    paper_name = "CDDFuse"
    datasets = ("brats", "paired")
    hyperparameters = {
        "dim": 64,
        "heads": 8,
        "encoder_blocks": 4,
        "decoder_blocks": 4,
        "detail_nodes": 3,
        "fusion_detail_nodes": 1,
        "phase1_epochs": 40,
        "phase2_epochs": 80,
        "lr": 1e-4,
        "weight_decay": 0.0,
        "step_size": 20,
        "gamma": 0.5,
        "min_lr": 1e-6,
        "w_ssim": 5.0,
        "w_decomposition": 2.0,
        "w_spatial_gradient": 5.0,
        "w_sobel": 10.0,
    }
    test_config = {"dim": 8, "heads": 2, "encoder_blocks": 1, "decoder_blocks": 1, "detail_nodes": 1,
                   "phase1_epochs": 1, "phase2_epochs": 1}
    training = {"batch_size": 8, "grad_clip": 0.01, "fusion_patch": 128}
    reference = {
        "repository": "https://github.com/Zhaozixiang1228/MMIF-CDDFuse",
        "commit": "fd8da1f",
        "parameters": 1188272,
        "notes": "exact count; decoder without the image residual (its MIF checkpoint); random 128 px crops "
                 "instead of a fixed patch grid without low-contrast patches",
    }

    def build(self):
        from methods._cddfuse_net import CDDFuseNet

        h = self.hparams
        return CDDFuseNet(h["dim"], h["heads"], h["encoder_blocks"], h["decoder_blocks"], h["detail_nodes"],
                          h["fusion_detail_nodes"])

    def fuse(self, nets, a, b):
        fused, _ = nets["fusion"](a, b)
        return minmax_per_image(fused)

    def stages(self, ctx, nets):
        from methods._cddfuse_losses import sobel_magnitude, spatial_gradient, ssim_loss

        net, h = nets["fusion"], self.hparams
        shared = [net.encoder, net.decoder]
        fusion_layers = [net.fuse_base, net.fuse_detail]
        optimizer = ctx.track(torch.optim.Adam(
            [{"params": [p for m in shared for p in m.parameters()]},
             {"params": [p for m in fusion_layers for p in m.parameters()]}],
            lr=h["lr"], weight_decay=h["weight_decay"]), "cddfuse")

        def decomposition(f):
            return decomposition_loss(f.base_a, f.base_b, f.detail_a, f.detail_b)

        def reconstruction(a, b):
            with ctx.autocast():
                a_hat, b_hat, feats = net.reconstruct(a, b)
            a_hat, b_hat = a_hat.float(), b_hat.float()
            rec_a = h["w_ssim"] * ssim_loss(a, a_hat) + F.mse_loss(a_hat, a)
            rec_b = h["w_ssim"] * ssim_loss(b, b_hat) + F.mse_loss(b_hat, b)
            dec = decomposition(feats)
            grad = F.l1_loss(spatial_gradient(a_hat), spatial_gradient(a))
            loss = rec_a + rec_b + h["w_decomposition"] * dec + h["w_spatial_gradient"] * grad
            return loss, {"rec_a": rec_a.item(), "rec_b": rec_b.item(), "dec": dec.item(), "grad": grad.item()}

        def fusion(a, b):
            with ctx.autocast():
                fused, feats = net(a, b)
            fused = fused.float()
            intensity = intensity_loss(fused, a, b)
            sobel = F.l1_loss(sobel_magnitude(fused), torch.maximum(sobel_magnitude(a), sobel_magnitude(b)))
            dec = decomposition(feats)
            loss = intensity + h["w_sobel"] * sobel + h["w_decomposition"] * dec
            return loss, {"intensity": intensity.item(), "sobel": sobel.item(), "dec": dec.item()}

        def phase(name, epochs, first_epoch, loss_of, trained):
            def run_epoch(local, total):
                epoch = first_epoch + local
                for group, lr in zip(optimizer.param_groups, learning_rates(h, epoch)):
                    group["lr"] = lr
                net.train()
                mean = RunningMean()
                for batch in ctx.loader(1000 + epoch, crop=ctx.training.fusion_patch):
                    a, b = ctx.sources(batch)
                    loss, parts = loss_of(a, b)
                    clip_each_and_step(ctx, loss, optimizer, trained, ctx.training.grad_clip)
                    mean.add({"loss": loss.item(), **parts})
                return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

            return Stage(name, epochs, run_epoch)

        return [phase("reconstruction", h["phase1_epochs"], 0, reconstruction, shared),
                phase("fusion", h["phase2_epochs"], h["phase1_epochs"], fusion, shared + fusion_layers)]


def learning_rates(h, epoch):
    """(encoder and decoder, fusion layers) rates at ``epoch`` of the whole run: CDDFuse's StepLR with a floor,
    stepped after every epoch for the encoder and decoder and after phase II epochs only for the fusion layers."""

    def step_lr(steps):
        return max(h["lr"] * h["gamma"] ** (steps // h["step_size"]), h["min_lr"])

    return step_lr(epoch), step_lr(max(epoch - h["phase1_epochs"], 0))


def clip_each_and_step(ctx, loss, optimizer, modules, clip):
    """Backward, clip every module's gradient to norm ``clip`` on its own (CDDFuse clips its four sub-networks
    separately, where ``ctx.step`` clips one global norm), step; AMP-scaler aware as ``ctx.step``."""
    optimizer.zero_grad(set_to_none=True)
    scaler = ctx.scaler
    (loss if scaler is None else scaler.scale(loss)).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip:
        norms = [torch.nn.utils.clip_grad_norm_(module.parameters(), clip) for module in modules]
        if scaler is None:
            raise_if_nonfinite(torch.stack(norms).sum(), loss)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
