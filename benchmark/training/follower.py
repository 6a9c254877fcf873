"""The one shared segmentation backbone (the Fuse4Seg follower, paper 3.4).

Every disjoint fusion + segmentation pipeline, and Fuse4Seg itself, segments with this network built
from the same ``follower`` configuration, so that Table 1 compares fused inputs rather than backbones.
"""

from __future__ import annotations

from typing import Any

NUM_CLASSES = 4  # background, NCR, ED, ET (contiguous labels)


def build_follower(config: dict[str, Any] | None = None, in_channels: int = 1):
    from methods._convnext_unet import SegmentationFollower

    return SegmentationFollower(in_channels=in_channels, num_classes=NUM_CLASSES, **(config or {}))
