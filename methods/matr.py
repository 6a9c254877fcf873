"""MATR (Tang et al., IEEE TIP 2022): multiscale adaptive transformer fusion, with its own recipe.

Network (``methods/_matr_net.py``): the two sources concatenated, an adaptive 3 x 3 convolution 2 -> 16, one shared
adaptive convolution applied 1, 2 and 3 times for three scales, a shared depth-3 Swin block stack (dim 16, 8 heads,
window 1) and the shared convolution on each scale, their sum, a 1 x 1 convolution and tanh.

Source roles: MATR's ``Train.py`` stacks (ir, vi) and its ``Test.py`` stacks (SPECT, MRI), so "ir" is the
functional image and "vi" the anatomical one. Here ir = b (PET / SPECT, GFP; BraTS' second modality) and
vi = a (MRI, PC; BraTS' first modality); the input is concat(b, a) and vi carries the 2.5 RMI weight.

Recipe (``Train.py``, ``losses/__init__.py``): SSIM(out, ir) + SSIM(out, vi) + RMI(out, ir) + 2.5 RMI(out, vi) on the
raw tanh output, with MATR's own SSIM and RMI = 0.5 BCE-with-logits + 0.5 region mutual information
(``methods/_matr_losses.py``); Adam (lr 1e-3, betas 0.9 / 0.999, eps 1e-8, no weight decay, constant rate), batch
64, 10 epochs, whole images in [0, 1] (its ``Normalize`` transform is built but never applied), no clipping.

Output mapping: the tanh output lies in (-1, 1); ``Test.py`` saves ``out * 255`` as uint8, i.e. it reads the
output as an image in [0, 1]. The fused image here is clamp(out, 0, 1): the same image wherever MATR's saved one is
defined (a negative value would wrap around in its uint8 cast).

Declared differences from the official code (details in ``methods/_matr_net.py``):
- the adaptive convolution keeps H x W (MATR reshapes its output to a square and fails on non-square inputs);
- the unused LayerNorm(96) of MATR's ``PatchEmbed`` is not built: 13,230 parameters against 13,422 (-1.4 %);
- its view-as-BHWC token layout is kept as architecture.
"""

import torch

from benchmark.methods import FusionMethod
from benchmark.nn.functional import float32_region
from benchmark.training.stages import fusion_stage


class Method(FusionMethod):
    kind = "fusion"
    display_name = "MATR"
    paper_name = "MATR"
    datasets = ("brats", "paired")
    hyperparameters = {
        "channels": 16,
        "heads": 8,
        "depth": 3,
        "mlp_ratio": 4.0,
        "epochs": 10,
        "lr": 1e-3,
        "w_ssim_ir": 1.0,
        "w_ssim_vi": 1.0,
        "w_rmi_ir": 1.0,
        "w_rmi_vi": 2.5,
    }
    test_config = {"epochs": 1}
    training = {"batch_size": 64, "grad_clip": 0.0, "fusion_patch": None}
    reference = {
        "repository": "https://github.com/tthinking/MATR",
        "commit": "b427644",
        "parameters": 13422,
        "notes": "-192: the unused LayerNorm(96) of its PatchEmbed is not built; adaptive conv fixed for "
                 "non-square inputs; output clamp(tanh, 0, 1)",
    }

    def build(self):
        from methods._matr_net import MATRNet

        h = self.hparams
        return MATRNet(h["channels"], h["heads"], h["depth"], h["mlp_ratio"])

    @staticmethod
    def raw_output(model, a, b):
        """MATR's tanh output on (ir, vi) = (b, a)."""
        return model(torch.cat((b, a), dim=1))

    def fuse(self, nets, a, b):
        return self.raw_output(nets["fusion"], a, b).float().clamp(0.0, 1.0)

    def fusion_loss(self, model, a, b, *, epoch, step):
        from methods._matr_losses import rmi_loss, ssim_loss

        h = self.hparams
        out = self.raw_output(model, a, b)
        with float32_region(out):  # fusion_stage calls this under autocast; the losses stay in float32 / float64
            out = out.float()
            parts = {"ssim_ir": ssim_loss(out, b), "ssim_vi": ssim_loss(out, a),
                     "rmi_ir": rmi_loss(out, b), "rmi_vi": rmi_loss(out, a)}
            loss = sum(h[f"w_{name}"] * value for name, value in parts.items())
        return loss, {name: value.item() for name, value in parts.items()}

    def stages(self, ctx, nets):
        model, h = nets["fusion"], self.hparams
        optimizer = ctx.track(torch.optim.Adam(model.parameters(), lr=h["lr"]), "matr")
        return [fusion_stage(ctx, "fusion", model, optimizer, self.fusion_loss, h["epochs"],
                             lambda epoch, epochs: h["lr"])]
