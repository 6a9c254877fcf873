"""Average fusion: the deterministic physical prior of the paper, F = (A + B) / 2.

Fuse4Seg's follower is warmed up on exactly this image (paper 3.2, stage 1). As a fusion method it has no
parameters: on BraTS it trains the shared follower (a disjoint pipeline), on paired data it is scored
directly. It is the floor every learned fusion method should beat.
"""

import torch

from benchmark.methods import FusionMethod


class AverageFusion(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * (a + b)


class Method(FusionMethod):
    kind = "fusion"
    display_name = "Average"
    paper_name = None
    datasets = ("brats", "paired")
    hyperparameters = {}
    test_config = {}
    trainable = False

    def build(self):
        return AverageFusion()
