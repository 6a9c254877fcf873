"""Direct multi-channel segmentation with the shared backbone: T1ce and FLAIR stacked as two channels.

The same ConvNeXt U-Net as the Fuse4Seg follower (``benchmark/nn/convnext_unet.py``), only with two input
channels: the fairest "no fusion" reference, since it differs from every disjoint pipeline and from
Fuse4Seg by its input alone. It is not one of the paper's multi-channel baselines (nnU-Net, TransUNet,
CENet, VM-UNet), hence no ``paper_name``.
"""

from benchmark.methods import MultiChannelMethod


class Method(MultiChannelMethod):
    kind = "multichannel"
    display_name = "ConvNeXt U-Net (2-channel)"
    paper_name = None
    datasets = ("brats",)
    hyperparameters = {"dims": [32, 64, 128, 256], "depths": [2, 2, 2, 2], "bottleneck_heads": 4}
    test_config = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "bottleneck_heads": 2}

    def build(self, in_channels: int, num_classes: int):
        from benchmark.nn.convnext_unet import SegmentationFollower

        h = self.hparams
        return SegmentationFollower(
            in_channels=in_channels,
            num_classes=num_classes,
            dims=tuple(h["dims"]),
            depths=tuple(h["depths"]),
            bottleneck_heads=h["bottleneck_heads"],
        )
