"""TransUNet (Chen et al. 2021): R50-ViT-B/16 hybrid encoder with the cascaded upsampler, on T1ce + FLAIR.

Network (``methods/_transunet_net.py``, written from Beckschen/TransUNet @02ef001): BiT ResNetV2 trunk (3, 4, 9
bottlenecks, weight-standardised convs, GroupNorm) -> 14 x 14 tokens of ViT-B (12 layers, 768, 12 heads, MLP 3072)
-> CUP decoder (512 -> 256, 128, 64, 16) with the trunk's three skips -> 3 x 3 head. Recipe (its Synapse
``train.py`` / ``trainer.py``): SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly decay (power 0.9) per iteration
over all iterations, loss 0.5 CE + 0.5 Dice (its ``DiceLoss``: softmax, squared-sum denominators, every class
including background weighted alike), batch 24, 150 epochs, 224 x 224 inputs, no AMP, no gradient clipping
(``methods/_transunet_recipe.py``, which CENet shares).
At the test scale (``epochs`` None) it trains for the suite's multi-channel budget (warmup + bi-level
epochs), as many steps as the other multi-channel rows.

Declared deviations:
- Two input channels: the stem conv takes T1ce and FLAIR (2 x 64 x 7 x 7 weights in place of 3 x 64 x 7 x 7: 3,136
  parameters fewer than the reference's 105,276,356).
- Trained from scratch: the official ``train.py`` always loads the ImageNet-21k ``R50+ViT-B_16.npz``, which we
  cannot download. Given a local copy (config ``weights.transunet.encoder``), ``load_imagenet21k`` maps it as the
  official ``load_from`` does (the RGB stem kernel summed and shared by the two inputs).
- Geometry: slices are resized to ``img_size`` (bilinear; the official zoom is cubic) and labels by nearest
  neighbour for training, as the official pipeline zooms them to 224; at inference the logits are resized back
  (bilinear) to the slice, where the official code zooms the argmax back by nearest neighbour.
- No data augmentation (the official random rot90/flip and rotation are not used): every method of the suite
  trains on the same un-augmented slices.
- The position-embedding resize of ``load_imagenet21k`` uses PyTorch's bilinear interpolation (corners aligned)
  in place of scipy's order-1 zoom: the same interpolation.
"""

import torch
import torch.nn.functional as F

from methods._transunet_recipe import FixedSidePolySGDMethod


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """TransUNet's ``DiceLoss``: mean over classes of 1 - (2 sum pg + s) / (sum p^2 + sum g^2 + s), batch sums."""
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    dice = (2 * (probs * onehot).sum(dims) + smooth) / ((probs * probs).sum(dims) + onehot.sum(dims) + smooth)
    return (1 - dice).mean()


def transunet_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 cross-entropy + 0.5 Dice (float32 logits)."""
    return 0.5 * F.cross_entropy(logits, target.long()) + 0.5 * dice_loss(logits, target)


class Method(FixedSidePolySGDMethod):
    kind = "multichannel"
    display_name = "TransUNet"
    paper_name = "transU-Net"
    datasets = ("brats",)
    hyperparameters = {
        "img_size": 224,
        "hidden": 768,
        "layers": 12,
        "heads": 12,
        "mlp_dim": 3072,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "resnet_units": [3, 4, 9],
        "resnet_width": 64,
        "gn_groups": 32,
        "head_channels": 512,
        "decoder_channels": [256, 128, 64, 16],
        "n_skip": 3,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "epochs": 150,
    }
    test_config = {"img_size": 64, "hidden": 32, "layers": 1, "heads": 2, "mlp_dim": 64, "resnet_units": [1, 1, 1],
                   "resnet_width": 8, "gn_groups": 4, "head_channels": 32, "decoder_channels": [16, 16, 8, 8],
                   "epochs": None}
    training = {"batch_size": 24, "amp": False, "grad_clip": 0.0}
    weights = {"encoder": "ImageNet-21k R50+ViT-B_16.npz"}
    reference = {
        "repository": "https://github.com/Beckschen/TransUNet",
        "commit": "02ef001",
        "parameters": 105276356,
        "notes": "R50-ViT-B/16 + CUP, 4 classes; ours has a 2-channel stem (-3,136 parameters) and trains from "
                 "scratch unless the ImageNet-21k npz is given",
    }

    def build(self, in_channels: int, num_classes: int):
        from methods._transunet_net import TransUNet

        h = self.hparams
        return TransUNet(in_channels, num_classes, img_size=h["img_size"], hidden=h["hidden"], layers=h["layers"],
                         heads=h["heads"], mlp_dim=h["mlp_dim"], dropout=h["dropout"],
                         attention_dropout=h["attention_dropout"], resnet_units=tuple(h["resnet_units"]),
                         resnet_width=h["resnet_width"], gn_groups=h["gn_groups"],
                         head_channels=h["head_channels"], decoder_channels=tuple(h["decoder_channels"]),
                         n_skip=h["n_skip"])

    loss = staticmethod(transunet_loss)

    def load_encoder(self, model, path):
        import numpy as np

        from methods._transunet_net import load_imagenet21k

        with np.load(path) as npz:
            load_imagenet21k(model, npz)
