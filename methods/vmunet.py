"""VM-UNet (Ruan et al., 2024): a U-shaped network of VMamba's visual state-space (VSS) blocks.

Written from JCruan519/VM-UNet (``models/vmunet/vmamba.py``, ``vmunet.py``, ``configs/config_setting_synapse.py``,
``datasets/dataset.py``, ``utils.py``), used for facts only. Architecture (blocks: ``methods/_vss_blocks.py``):
4 x 4 patch embedding (2 input channels -> 96, LayerNorm); encoder stages of [2, 2, 2, 2] VSS blocks at
96/192/384/768 channels with patch merging; decoder stages of [2, 2, 2, 1] blocks at 768/384/192/96, each after
the first adding the encoder's skip and expanding 2x; a final 4x expansion to 24 channels and a 1 x 1 convolution
to the 4 classes. A VSS block is x + DropPath(SS2D(LayerNorm(x))); SS2D (d_state 16, expand 2) scans every token
in four directions. Stochastic depth 0.2 (the Synapse config), rising over the encoder, falling over the decoder.

Recipe (its Synapse configuration): AdamW, lr 1e-3, weight decay 1e-2 (``training.weight_decay``), cosine
annealing stepped per epoch with T_max 100 and eta_min 1e-5 over 300 epochs (the lr falls for 100 epochs, climbs
back for the next 100, as PyTorch's CosineAnnealingLR does past T_max), batch 32, CE + Dice 1:1 (Dice: softmax,
every class including background, squared sums in the denominator, smooth 1e-5, averaged over classes),
no gradient clipping. Augmentation as its RandomGenerator: with p 0.5 a random 90-degree rotation and a flip,
otherwise with p 0.5 a rotation by an integer angle in [-20, 20) with nearest-neighbour sampling (image and
label alike); then the slice is resized to 224 x 224 (image bicubic, label nearest) and the loss is computed there.
After every epoch the validation split's Dice is logged (``val_dice``, as the framework's segmentation stages do).

Declared deviations:
- no VMamba-S ImageNet pretraining (``vmamba_small_e238_ema.pth`` is not available here): trained from scratch;
- 2 input channels (T1ce, FLAIR) in place of the grey slice repeated to 3 channels, and 4 classes: 27,426,100
  parameters against 27,427,636 for the reference config with 3 input channels and 4 classes (-0.006 %);
- the selective scan runs in pure PyTorch (``mambapy``'s parallel scan) unless ``mamba_ssm`` is installed and
  the run is on CUDA (``benchmark/nn/selective_scan.py``); both compute the same recurrence;
- ``segment`` resizes the stacked slices to ``input_size`` (bicubic, as its zoom of order 3) and maps the logits
  back to the slice's H, W by nearest-neighbour sampling (its test zooms the label map back with order 0; we
  return logits, whose argmax is the same map). ``input_size: None`` (the tiny ``test_config``) pads to a
  multiple of 32 instead and crops the logits (the loss is then computed on the slice's own grid);
- PyTorch's bicubic / nearest-exact interpolation in place of scipy's ``zoom`` grids; for a non-square slice the
  90-degree rotations are restricted to 0 and 180 degrees (an odd rotation would change the slice's shape
  before the resize; BraTS slices are square);
- the epochs are epochs of our training store (its Synapse store has 2,211 slices).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.nn.init import init_vit_weights
from benchmark.methods import MultiChannelMethod
from benchmark.nn.restormer import pad_to_multiple
from benchmark.training.loop import Stage, set_lr
from benchmark.training.stages import RunningMean, validation_dice
from methods._vss_blocks import SS2D, DropPath, PatchEmbed2D, PatchExpand2D, VSSDecoder, VSSEncoder

MULTIPLE = 32  # 4 x 4 patches, then three 2x merges


class VSSBlock(nn.Module):
    """VM-UNet's block on (B, H, W, C): x + DropPath(SS2D(LayerNorm(x)))."""

    def __init__(self, dim: int, d_state: int, drop_path: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state=d_state, scan="cross")
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class VMUNet(nn.Module):
    """(B, in_channels, H, W) with H, W multiples of 32 -> logits (B, num_classes, H, W)."""

    def __init__(self, in_channels: int, num_classes: int, dims: list[int], depths: list[int],
                 depths_decoder: list[int], d_state: int, drop_path_rate: float):
        super().__init__()
        block = lambda dim, rate: VSSBlock(dim, d_state, rate)  # noqa: E731
        self.patch_embed = PatchEmbed2D(in_channels, dims[0])
        self.encoder = VSSEncoder(dims, depths, block, drop_path_rate)
        self.decoder = VSSDecoder(dims, depths_decoder, block, drop_path_rate)
        self.final_up = PatchExpand2D(dims[0], 4)
        self.final_conv = nn.Conv2d(dims[0] // 4, num_classes, 1)
        init_vit_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % MULTIPLE or x.shape[-1] % MULTIPLE:
            raise ValueError(f"VM-UNet needs H and W divisible by {MULTIPLE}, got {tuple(x.shape[-2:])}")
        x, skips = self.encoder(self.patch_embed(x))
        x = self.decoder(x, skips)
        return self.final_conv(self.final_up(x).permute(0, 3, 1, 2))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """VM-UNet's (TransUNet's) multi-class Dice: per class over the batch, 1 - (2 I + s) / (sum p^2 + sum t^2 + s),
    averaged over every class, background included."""
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target.long(), probs.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + smooth) / (probs.square().sum(dims) + onehot.square().sum(dims) + smooth)
    return (1 - dice).mean()


def rotate_nearest(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (C, H, W) about its centre, nearest-neighbour sampling, zero outside (scipy's rotate, order 0)."""
    h, w = x.shape[-2:]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    theta = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32, device=x.device)
    grid = F.affine_grid(theta[None], [1, *x.shape], align_corners=False)
    return F.grid_sample(x[None].float(), grid, mode="nearest", align_corners=False)[0].to(x.dtype)


def synapse_augment(images: torch.Tensor, labels: torch.Tensor, g: torch.Generator):
    """VM-UNet's RandomGenerator on a batch, sample by sample, its draws from ``g`` (module doc)."""
    square = images.shape[-1] == images.shape[-2]
    draw = lambda high: int(torch.randint(high, (), generator=g))  # noqa: E731
    out_images, out_labels = [], []
    for image, label in zip(images, labels):
        label = label[None]
        if float(torch.rand((), generator=g)) > 0.5:
            k = draw(4) if square else 2 * draw(2)
            axis = -1 - draw(2)
            image = image.rot90(k, dims=(-2, -1)).flip(axis)
            label = label.rot90(k, dims=(-2, -1)).flip(axis)
        elif float(torch.rand((), generator=g)) > 0.5:
            angle = draw(40) - 20
            image, label = rotate_nearest(image, angle), rotate_nearest(label, angle)
        out_images.append(image)
        out_labels.append(label[0])
    return torch.stack(out_images), torch.stack(out_labels)


class Method(MultiChannelMethod):
    kind = "multichannel"
    display_name = "VM-UNet"
    paper_name = "VM-UNet"
    datasets = ("brats",)
    hyperparameters = {
        "dims": [96, 192, 384, 768],
        "depths": [2, 2, 2, 2],
        "depths_decoder": [2, 2, 2, 1],
        "d_state": 16,
        "drop_path_rate": 0.2,
        "input_size": 224,
        "epochs": 300,
        "lr": 1e-3,
        "t_max": 100,
        "eta_min": 1e-5,
        "w_ce": 1.0,
        "w_dice": 1.0,
        "augment": True,
    }
    test_config = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 4,
                   "input_size": None, "epochs": 2}
    training = {"batch_size": 32, "weight_decay": 1e-2, "grad_clip": 0.0}
    requires = {"mambapy": "mambapy>=1.2"}
    accelerators = {"mamba_ssm": "CUDA selective-scan kernel (mamba-ssm), used on CUDA in place of the pure "
                                 "PyTorch parallel scan"}
    reference = {
        "repository": "https://github.com/JCruan519/VM-UNet",
        "commit": "43c495b",
        "parameters": 27427636,
        "notes": "reference: its Synapse config with 3 input channels, 4 classes; ours has 2 input channels "
                 "(T1ce, FLAIR); no VMamba-S pretraining",
    }

    def build(self, in_channels: int, num_classes: int) -> VMUNet:
        h = self.hparams
        return VMUNet(in_channels, num_classes, h["dims"], h["depths"], h["depths_decoder"], h["d_state"],
                      h["drop_path_rate"])

    def _to_network(self, images: torch.Tensor):
        """The slices at the network's size and the map of its logits back to the slices' H, W (module doc)."""
        size, (h, w) = self.hparams["input_size"], images.shape[-2:]
        if size is None:
            x, _ = pad_to_multiple(images, MULTIPLE)
            return x, lambda logits: logits[..., :h, :w]
        if size % MULTIPLE:
            raise ValueError(f"VM-UNet input_size must be a multiple of {MULTIPLE}, got {size}")
        x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
        return x, lambda logits: F.interpolate(logits, size=(h, w), mode="nearest-exact")

    def segment(self, nets, images):
        x, back = self._to_network(images)
        return back(nets["segmenter"](x))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h = self.hparams
        return h["w_ce"] * F.cross_entropy(logits.float(), target.long()) + h["w_dice"] * dice_loss(logits, target)

    def lr_at(self, epoch: int) -> float:
        """PyTorch's CosineAnnealingLR (closed form) after ``epoch`` scheduler steps."""
        h = self.hparams
        return h["eta_min"] + (h["lr"] - h["eta_min"]) * (1 + math.cos(math.pi * epoch / h["t_max"])) / 2

    def stages(self, ctx, nets):
        model, h = nets["segmenter"], self.hparams
        optimizer = ctx.track(self.configure_optimizer(model, ctx, h["lr"]), "segmenter")

        def run_epoch(epoch: int, total: int) -> dict[str, float]:
            set_lr(optimizer, self.lr_at(epoch))
            model.train()
            mean = RunningMean()
            g = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 7_000 + epoch)  # augmentation draws
            for batch in ctx.loader(2000 + epoch):
                images, target = batch["images"].to(ctx.device), batch["label"].to(ctx.device)
                if h["augment"]:
                    images, target = synapse_augment(images, target, g)
                x, back = self._to_network(images)
                if h["input_size"] is not None:  # its pipeline: the label resized with the slice
                    target = F.interpolate(target[:, None].float(), size=x.shape[-2:], mode="nearest-exact")
                    target, back = target[:, 0].long(), (lambda logits: logits)
                with ctx.autocast():
                    logits = back(model(x))
                loss = self.loss(logits, target)
                ctx.step(loss, optimizer, model)
                mean.add({"seg_loss": loss.item()})
            model.eval()
            checked = validation_dice(ctx, lambda batch: self.segment(nets, batch["images"].to(ctx.device)))
            return {**mean.result(), **checked, "lr": optimizer.param_groups[0]["lr"]}

        return [Stage("segmentation", h["epochs"], run_epoch)]
