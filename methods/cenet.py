"""CENet (MICCAI 2025): PVTv2-b2 encoder with CENet's decoder (CFAM, DSEB, EUCB, out head), on T1ce + FLAIR.

Network (``methods/_cenet_pvt.py``, ``methods/_cenet_decoder.py``, written from xmindflow/cenet @030a97d and
whai362/PVT): pvt_v2_b2 (64/128/320/512, depths 3/4/6/3, heads 1/2/5/8, sr ratios 8/4/2/1, overlapping patch
embeddings, stochastic depth 0.1), decoder as in ``decoders.py`` with the settings of its ACDC script (skip mode
``cat``, DSEB = edge amplification + differential attention with 4/4/4 heads, edge scales 1.0 and 0.5, EUCB
up-sampling; out head with the up-conv block). Recipe (``scripts/acdc.sh``, ``main_acdc.py``, ``utils/core.py``):
SGD lr 0.01, momentum 0.9, weight decay 1e-4, poly decay (power 0.9) per iteration, batch 8, 120 epochs, AMP
(float16 with a grad scaler), loss = BoundaryDoU alone (``--loss_type boundary --loss_weights 1``), 224 x 224.
We follow the ACDC recipe, not the Synapse one (lr 0.015, 250 epochs, 16/8/8 heads, scales 0.8/0.4): ACDC is the
4-class MRI task like ours, and the reference's 33,385,704 parameters are those of its configuration.
At the test scale (``epochs`` None) it trains for the suite's multi-channel budget (warmup + bi-level
epochs), as many steps as the other multi-channel rows.

Declared deviations:
- Two input channels: the first patch embedding takes T1ce and FLAIR (2 x 64 x 7 x 7 weights; the reference's
  backbone always has 3 and fails on a 2-channel input), and the out head's input block sees both channels.
  The reference count is CENet built with ``input_channels=2`` and 4 classes (its PVT stem keeping 3 channels):
  ours has 3,136 parameters fewer.
- No ImageNet weights by default (the reference loads ``pvt_v2_b2.pth`` unless ``--no_ptenc``). Given a local
  ``pvt_v2_b2.pth`` (config ``weights.cenet.encoder``), ``load_pvt_v2`` copies it into the encoder, the RGB
  kernel of the first patch embedding summed and shared by the two inputs.
- Geometry: the reference only runs at 224 x 224; slices are resized to ``img_size`` (bilinear; its zoom is
  cubic; labels by nearest neighbour) for training and the logits resized back (bilinear) at inference, where its
  pipeline zooms the argmax back by nearest neighbour. Our modules take any side that is a multiple of 32 (for the
  tiny test scale); the DSEB attention's memory view is kept at every size.
- No data augmentation (its random rot90/flip/rotation): every method of the suite trains on the same slices.
- The CCU channel gate's BatchNorm acts in training only (the reference skips it for single-sample batches, and
  its inference runs one slice at a time); our batched inference gives the reference's one-slice predictions.
"""

import torch
import torch.nn.functional as F

from methods._transunet_recipe import FixedSidePolySGDMethod

CROSS = ((0.0, 1.0, 0.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0))


def boundary_dou_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Boundary Difference over Union loss (CENet's ``BoundaryDoULoss``), mean over every class.

    Per class over the batch: alpha = min(2 (1 - C / S) - 1, 0.8), with S the class's pixels and C those of
    them with a 4-neighbour outside the class (image borders count as outside);
    loss = (sum p^2 + sum g^2 - 2 I) / (sum p^2 + sum g^2 - (1 + alpha) I), I = sum p g (both + smooth).
    """
    probs = logits.float().softmax(dim=1)
    b, c, h, w = probs.shape
    onehot = F.one_hot(target.long(), c).permute(0, 3, 1, 2).float()
    kernel = torch.tensor(CROSS, device=onehot.device).view(1, 1, 3, 3)
    counts = F.conv2d(onehot.reshape(b * c, 1, h, w), kernel, padding=1).view(b, c, h, w) * onehot
    boundary = ((counts > 0) & (counts < 5)).float().sum(dim=(0, 2, 3))
    size = onehot.sum(dim=(0, 2, 3))
    alpha = (2 * (1 - (boundary + smooth) / (size + smooth)) - 1).clamp(max=0.8)
    intersect = (probs * onehot).sum(dim=(0, 2, 3))
    total = (probs * probs).sum(dim=(0, 2, 3)) + size
    return ((total - 2 * intersect + smooth) / (total - (1 + alpha) * intersect + smooth)).mean()


class Method(FixedSidePolySGDMethod):
    kind = "multichannel"
    display_name = "CENet"
    paper_name = "CENet (2025)"
    datasets = ("brats",)
    hyperparameters = {
        "img_size": 224,
        "dims": [64, 128, 320, 512],
        "depths": [3, 4, 6, 3],
        "heads": [1, 2, 5, 8],
        "sr_ratios": [8, 4, 2, 1],
        "mlp_ratios": [8, 8, 4, 4],
        "drop_path": 0.1,
        "diffattn_heads": [4, 4, 4],
        "scale_factors": [1.0, 0.5],
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "epochs": 120,
    }
    test_config = {"img_size": 64, "dims": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "heads": [1, 1, 2, 2],
                   "mlp_ratios": [2, 2, 2, 2], "diffattn_heads": [2, 2, 2], "epochs": None}
    training = {"batch_size": 8, "amp": True, "amp_dtype": "float16", "grad_clip": 0.0}
    weights = {"encoder": "ImageNet PVTv2-b2 pvt_v2_b2.pth"}
    reference = {
        "repository": "https://github.com/xmindflow/cenet",
        "commit": "030a97d",
        "parameters": 33385704,
        "notes": "PVTv2-b2 + CENet decoder, ACDC settings, 4 classes, input_channels=2 (its PVT stem keeps 3 "
                 "channels); ours has a 2-channel stem (-3,136) and trains from scratch unless pvt_v2_b2.pth is given",
    }

    def build(self, in_channels: int, num_classes: int):
        from methods._cenet_decoder import CENet

        h = self.hparams
        if h["img_size"] % 32:
            raise ValueError(f"CENet: img_size must be a multiple of 32 (the encoder's stride), got {h['img_size']}")
        return CENet(in_channels, num_classes, dims=h["dims"], depths=h["depths"], heads=h["heads"],
                     sr_ratios=h["sr_ratios"], mlp_ratios=h["mlp_ratios"], drop_path=h["drop_path"],
                     diffattn_heads=h["diffattn_heads"], scale_factors=h["scale_factors"])

    loss = staticmethod(boundary_dou_loss)

    def load_encoder(self, model, path):
        from methods._cenet_pvt import load_pvt_v2

        load_pvt_v2(model.backbone, torch.load(path, map_location="cpu", weights_only=True))
