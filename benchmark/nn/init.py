"""Weight initialisations shared by several methods' networks."""

from __future__ import annotations

import math

from torch import nn


def init_vit_weights(module: nn.Module, *, conv_fan_out: bool = False) -> None:
    """The ViT / Swin family's initialisation (timm's ``_init_weights``) over every submodule: linear layers
    truncated-normal (std 0.02) with zero bias, LayerNorms at unit scale and zero shift; with ``conv_fan_out``
    (PVTv2) 2-D convolutions He-normal over their fan-out with zero bias, other layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif conv_fan_out and isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
