"""TransUNet's network, written from Beckschen/TransUNet @02ef001 (``networks/vit_seg_modeling*.py``).

R50-ViT-B/16 hybrid encoder: a BiT ResNetV2 trunk (weight-standardised convolutions, GroupNorm; the stem has no
max-pool inside, it is applied after the first skip is taken; stages of 3, 4, 9 bottlenecks), whose stride-16 map
is embedded by a 1 x 1 "patch" convolution into ViT-B tokens (12 pre-norm layers, 768 wide, 12 heads, MLP 3072,
learned position embeddings initialised at zero). The cascaded upsampler (CUP) turns the tokens back into a map
(3 x 3 conv to 512), then four x2 bilinear up-sampling blocks (256, 128, 64, 16 channels) that take the trunk's
three skips (stride 8, 4, 2), and a 3 x 3 segmentation head.

Module names follow the official code, so ``load_imagenet21k`` can map the ImageNet-21k ``R50+ViT-B_16.npz``
exactly as the official ``load_from`` does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT): every filter is shifted and scaled to zero mean, unit variance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """The official ``PreActBottleneck``: despite its name each conv is followed by its GroupNorm (post-norm),
    the stride sits on the 3 x 3 conv, and the projection shortcut has a per-channel GroupNorm (eps 1e-5)."""

    def __init__(self, cin: int, cout: int, cmid: int, stride: int, groups: int):
        super().__init__()
        self.gn1 = nn.GroupNorm(groups, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(groups, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(groups, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.projects = stride != 1 or cin != cout
        if self.projects:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.downsample(x)) if self.projects else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(residual + self.gn3(self.conv3(y)))


class ResNetV2(nn.Module):
    """BiT trunk: stem (7 x 7 stride 2), max-pool, stages of ``units`` bottlenecks at 4w, 8w, 16w channels.

    Returns the stride-16 map and the skips [stage 2 (8w, /8), stage 1 (4w, /4), stem (w, /2)]; a skip that the
    unpadded max-pool left one or two pixels short is zero-padded at the bottom and right, as officially.
    """

    def __init__(self, in_channels: int, width: int, units: tuple[int, int, int], groups: int):
        super().__init__()
        self.width = width
        self.root = nn.Sequential(OrderedDict([
            ("conv", StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False)),
            ("gn", nn.GroupNorm(groups, width, eps=1e-6)),
            ("relu", nn.ReLU()),
        ]))
        stages, cin = [], width
        for i, n in enumerate(units):
            cmid = width * 2 ** i
            cout = 4 * cmid
            blocks = [(f"unit{j + 1}", Bottleneck(cin if j == 0 else cout, cout, cmid, 2 if i and j == 0 else 1,
                                                  groups)) for j in range(n)]
            stages.append((f"block{i + 1}", nn.Sequential(OrderedDict(blocks))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(stages))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        size = x.shape[-1]
        x = self.root(x)
        features = [x]
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for i, stage in enumerate(list(self.body)[:-1]):
            x = stage(x)
            pad = size // (4 * 2 ** i) - x.shape[-1]
            features.append(F.pad(x, (0, pad, 0, pad)) if pad else x)
        return self.body[-1](x), features[::-1]


class Embeddings(nn.Module):
    """Hybrid embedding: ResNet map -> 1 x 1 patches (the grid is img_size / 16) + position embeddings."""

    def __init__(self, in_channels: int, img_size: int, hidden: int, width: int, units: tuple[int, int, int],
                 groups: int, dropout: float):
        super().__init__()
        grid = img_size // 16
        self.hybrid_model = ResNetV2(in_channels, width, units, groups)
        self.patch_embeddings = nn.Conv2d(16 * width, hidden, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.hybrid_model(x)
        tokens = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return self.dropout(tokens + self.position_embeddings), features


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, attention_dropout: float):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.attention_dropout = attention_dropout
        self.proj_dropout = nn.Dropout(attention_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
                   for f in (self.query, self.key, self.value))
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(b, n, c)
        return self.proj_dropout(self.out(y))


class Mlp(nn.Module):
    def __init__(self, hidden: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(hidden, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        for fc in (self.fc1, self.fc2):  # the official initialisation
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm ViT layer (LayerNorm eps 1e-6)."""

    def __init__(self, hidden: int, heads: int, mlp_dim: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = Attention(hidden, heads, attention_dropout)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn = Mlp(hidden, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    def __init__(self, layers: int, **block):
        super().__init__()
        self.layer = nn.ModuleList(Block(**block) for _ in range(layers))
        self.encoder_norm = nn.LayerNorm(block["hidden"], eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return self.encoder_norm(x)


class Transformer(nn.Module):
    def __init__(self, embeddings: Embeddings, encoder: Encoder):
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tokens, features = self.embeddings(x)
        return self.encoder(tokens), features


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """The official ``Conv2dReLU`` with batch norm: 3 x 3 conv (no bias), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DecoderBlock(nn.Module):
    """x2 bilinear up-sampling (corners aligned), concatenation of the skip if any, two conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, skip: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    def __init__(self, hidden: int, head_channels: int, channels: tuple[int, ...], skips: list[int]):
        super().__init__()
        self.conv_more = conv_bn_relu(hidden, head_channels)
        ins = [head_channels, *channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s) for i, o, s in zip(ins, channels, skips))

    def forward(self, tokens: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        b, n, c = tokens.shape
        side = int(round(n ** 0.5))
        x = self.conv_more(tokens.transpose(1, 2).reshape(b, c, side, side))
        for i, block in enumerate(self.blocks):
            x = block(x, features[i] if i < len(features) else None)
        return x


class TransUNet(nn.Module):
    """(B, in_channels, S, S) -> logits (B, classes, S, S); S = ``img_size``, a multiple of 16."""

    def __init__(self, in_channels: int, num_classes: int, *, img_size: int, hidden: int, layers: int, heads: int,
                 mlp_dim: int, dropout: float, attention_dropout: float, resnet_units: tuple[int, int, int],
                 resnet_width: int, gn_groups: int, head_channels: int, decoder_channels: tuple[int, ...],
                 n_skip: int):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"TransUNet: img_size must be a multiple of 16 (the trunk's stride), got {img_size}")
        if hidden % heads:
            raise ValueError(f"TransUNet: hidden size {hidden} is not divisible by {heads} heads")
        self.img_size = img_size
        embeddings = Embeddings(in_channels, img_size, hidden, resnet_width, tuple(resnet_units), gn_groups, dropout)
        encoder = Encoder(layers, hidden=hidden, heads=heads, mlp_dim=mlp_dim, dropout=dropout,
                          attention_dropout=attention_dropout)
        self.transformer = Transformer(embeddings, encoder)
        self.n_skip = n_skip
        skips = [8 * resnet_width, 4 * resnet_width, resnet_width, 0][:n_skip]
        skips += [0] * (len(decoder_channels) - len(skips))
        self.decoder = DecoderCup(hidden, head_channels, tuple(decoder_channels), skips)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"TransUNet expects {self.img_size} x {self.img_size} inputs, got {tuple(x.shape[-2:])}")
        tokens, features = self.transformer(x)
        return self.segmentation_head(self.decoder(tokens, features[:self.n_skip]))


# ----------------------------------------------------------------------------------- ImageNet-21k weights


def _conv(kernel: np.ndarray) -> torch.Tensor:
    """HWIO (Flax) -> OIHW (PyTorch)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _first_conv(kernel: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The RGB stem kernel for ``in_channels`` inputs: each input gets the RGB sum divided by ``in_channels``,
    so ``in_channels`` copies of a grey image respond as the grey image repeated in RGB would (its official use)."""
    if kernel.shape[1] == in_channels:
        return kernel
    return kernel.sum(dim=1, keepdim=True).div(in_channels).repeat(1, in_channels, 1, 1)


def load_imagenet21k(model: TransUNet, weights: Mapping[str, np.ndarray]) -> None:
    """Copy the official ``R50+ViT-B_16.npz`` (BiT trunk + ViT-B/16 on ImageNet-21k) into ``model``.

    The key mapping is the official ``VisionTransformer.load_from``: patch embedding, encoder norm, position
    embeddings (the class token dropped; the grid bilinearly resized when ``img_size`` is not 224), every encoder
    layer, the stem and every bottleneck. The decoder and head stay at their initialisation.
    """
    tensors: dict[str, torch.Tensor] = {}
    emb = "transformer.embeddings."
    tensors[emb + "patch_embeddings.weight"] = _conv(weights["embedding/kernel"])
    tensors[emb + "patch_embeddings.bias"] = torch.from_numpy(weights["embedding/bias"])
    tensors["transformer.encoder.encoder_norm.weight"] = torch.from_numpy(weights["Transformer/encoder_norm/scale"])
    tensors["transformer.encoder.encoder_norm.bias"] = torch.from_numpy(weights["Transformer/encoder_norm/bias"])
    tensors[emb + "position_embeddings"] = _position_embeddings(
        torch.from_numpy(weights["Transformer/posembed_input/pos_embedding"]),
        model.transformer.embeddings.position_embeddings.shape[1])
    for i in range(len(model.transformer.encoder.layer)):
        root, ours = f"Transformer/encoderblock_{i}/", f"transformer.encoder.layer.{i}."
        for name in ("query", "key", "value", "out"):
            where = root + f"MultiHeadDotProductAttention_1/{name}/"
            kernel = torch.from_numpy(weights[where + "kernel"])  # (in, heads, head dim) or (heads, head dim, out)
            kernel = kernel.reshape(-1, kernel.shape[-1]) if name == "out" else kernel.reshape(kernel.shape[0], -1)
            tensors[ours + f"attn.{name}.weight"] = kernel.t()
            tensors[ours + f"attn.{name}.bias"] = torch.from_numpy(weights[where + "bias"]).reshape(-1)
        for j, fc in ((0, "fc1"), (1, "fc2")):
            tensors[ours + f"ffn.{fc}.weight"] = torch.from_numpy(weights[root + f"MlpBlock_3/Dense_{j}/kernel"]).t()
            tensors[ours + f"ffn.{fc}.bias"] = torch.from_numpy(weights[root + f"MlpBlock_3/Dense_{j}/bias"])
        for theirs, name in (("LayerNorm_0", "attention_norm"), ("LayerNorm_2", "ffn_norm")):
            tensors[ours + f"{name}.weight"] = torch.from_numpy(weights[root + f"{theirs}/scale"])
            tensors[ours + f"{name}.bias"] = torch.from_numpy(weights[root + f"{theirs}/bias"])
    trunk = model.transformer.embeddings.hybrid_model
    res = emb + "hybrid_model."
    tensors[res + "root.conv.weight"] = _first_conv(_conv(weights["conv_root/kernel"]), trunk.root.conv.in_channels)
    tensors[res + "root.gn.weight"] = torch.from_numpy(weights["gn_root/scale"]).reshape(-1)
    tensors[res + "root.gn.bias"] = torch.from_numpy(weights["gn_root/bias"]).reshape(-1)
    for block_name, block in trunk.body.named_children():
        for unit_name, unit in block.named_children():
            theirs, ours = f"{block_name}/{unit_name}/", f"{res}body.{block_name}.{unit_name}."
            for k in (1, 2, 3):
                tensors[ours + f"conv{k}.weight"] = _conv(weights[theirs + f"conv{k}/kernel"])
                tensors[ours + f"gn{k}.weight"] = torch.from_numpy(weights[theirs + f"gn{k}/scale"]).reshape(-1)
                tensors[ours + f"gn{k}.bias"] = torch.from_numpy(weights[theirs + f"gn{k}/bias"]).reshape(-1)
            if unit.projects:
                tensors[ours + "downsample.weight"] = _conv(weights[theirs + "conv_proj/kernel"])
                tensors[ours + "gn_proj.weight"] = torch.from_numpy(weights[theirs + "gn_proj/scale"]).reshape(-1)
                tensors[ours + "gn_proj.bias"] = torch.from_numpy(weights[theirs + "gn_proj/bias"]).reshape(-1)
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in tensors.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ValueError("R50+ViT-B_16 weights do not fit this TransUNet (use the full-size hyper-parameters): "
                         + "; ".join(wrong[:5]))
    model.load_state_dict(tensors, strict=False)


def _position_embeddings(posemb: torch.Tensor, tokens: int) -> torch.Tensor:
    """Drop the class token; resize the grid bilinearly (corners aligned, as scipy's order-1 zoom) if needed."""
    if posemb.shape[1] == tokens:
        return posemb
    grid = posemb[:, 1:]
    old, new = int(round(grid.shape[1] ** 0.5)), int(round(tokens ** 0.5))
    if old == new:
        return grid
    image = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(new, new), mode="bilinear", align_corners=True)
    return image.permute(0, 2, 3, 1).reshape(1, new * new, -1)
