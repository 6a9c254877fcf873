"""TransUNet: its loss against the official per-class formula, the trunk's skip geometry at 224, the ImageNet-21k
npz mapping (official key layout), and the per-iteration poly schedule of the shared recipe."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from methods._transunet_net import ResNetV2, TransUNet, load_imagenet21k
from methods.transunet import Method, dice_loss, transunet_loss

TINY = dict(img_size=32, hidden=8, layers=2, heads=2, mlp_dim=16, dropout=0.0, attention_dropout=0.0,
            resnet_units=(1, 2, 1), resnet_width=4, gn_groups=2, head_channels=8, decoder_channels=(8, 8, 4, 4),
            n_skip=3)


def _official_dice(logits, target, n_classes):
    """TransUNet's utils.DiceLoss(softmax=True), class by class."""
    probs = torch.softmax(logits, dim=1)
    loss = 0.0
    for i in range(n_classes):
        score, truth = probs[:, i], (target == i).float()
        intersect = torch.sum(score * truth)
        loss += 1 - (2 * intersect + 1e-5) / (torch.sum(score * score) + torch.sum(truth * truth) + 1e-5)
    return loss / n_classes


def test_loss_is_half_ce_half_official_dice():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=g)
    target = torch.randint(0, 3, (3, 5, 6), generator=g)  # class 3 absent: its Dice term is 1 - s / (sum p^2 + s)
    assert torch.allclose(dice_loss(logits, target), _official_dice(logits, target, 4), atol=1e-6)
    expected = 0.5 * F.cross_entropy(logits, target) + 0.5 * _official_dice(logits, target, 4)
    assert torch.allclose(transunet_loss(logits, target), expected, atol=1e-6)


def test_trunk_skips_at_224_match_the_official_geometry():
    """At 224 the unpadded max-pool leaves 55 x 55, zero-padded to 56 at the bottom and right."""
    trunk = ResNetV2(2, width=8, units=(1, 1, 1), groups=4).eval()
    with torch.no_grad():
        x, (s8, s4, s2) = trunk(torch.rand(1, 2, 224, 224))
    assert x.shape == (1, 128, 14, 14)
    assert s8.shape == (1, 64, 28, 28) and s4.shape == (1, 32, 56, 56) and s2.shape == (1, 8, 112, 112)
    assert s4[..., -1, :].abs().sum() == 0 and s4[..., :, -1].abs().sum() == 0


def _official_npz(model: TransUNet, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random weights in the layout of R50+ViT-B_16.npz (Flax names, HWIO kernels, per-head attention kernels,
    a class token in the position embeddings, an RGB stem)."""
    d, heads = TINY["hidden"], TINY["heads"]
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w = {"embedding/kernel": r(1, 1, 16 * TINY["resnet_width"], d), "embedding/bias": r(d),
         "Transformer/encoder_norm/scale": r(d), "Transformer/encoder_norm/bias": r(d),
         "Transformer/posembed_input/pos_embedding": r(1, 1 + (TINY["img_size"] // 16) ** 2, d),
         "conv_root/kernel": r(7, 7, 3, TINY["resnet_width"]), "gn_root/scale": r(TINY["resnet_width"]),
         "gn_root/bias": r(TINY["resnet_width"])}
    for i in range(TINY["layers"]):
        root = f"Transformer/encoderblock_{i}/"
        for name in ("query", "key", "value"):
            w[root + f"MultiHeadDotProductAttention_1/{name}/kernel"] = r(d, heads, d // heads)
            w[root + f"MultiHeadDotProductAttention_1/{name}/bias"] = r(heads, d // heads)
        w[root + "MultiHeadDotProductAttention_1/out/kernel"] = r(heads, d // heads, d)
        w[root + "MultiHeadDotProductAttention_1/out/bias"] = r(d)
        w[root + "MlpBlock_3/Dense_0/kernel"], w[root + "MlpBlock_3/Dense_0/bias"] = r(d, 16), r(16)
        w[root + "MlpBlock_3/Dense_1/kernel"], w[root + "MlpBlock_3/Dense_1/bias"] = r(16, d), r(d)
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            w[root + f"{norm}/scale"], w[root + f"{norm}/bias"] = r(d), r(d)
    for name, module in model.state_dict().items():
        parts = name.split(".")
        if parts[2] != "hybrid_model" or parts[3] != "body":
            continue
        block, unit, layer, kind = parts[4:8]
        prefix = f"{block}/{unit}/"
        if layer.startswith("conv") or layer == "downsample":
            key = prefix + ("conv_proj" if layer == "downsample" else layer) + "/kernel"
            w[key] = r(*module.shape[2:], module.shape[1], module.shape[0])
        else:
            w[prefix + f"{layer}/{'scale' if kind == 'weight' else 'bias'}"] = r(1, 1, 1, module.shape[0])
    return w


def test_imagenet21k_npz_maps_as_the_official_load_from():
    torch.manual_seed(0)
    model = TransUNet(2, 4, **TINY)
    npz = _official_npz(model, np.random.default_rng(0))
    load_imagenet21k(model, npz)
    s = model.state_dict()
    q = npz["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"]
    assert torch.equal(s["transformer.encoder.layer.1.attn.query.weight"], torch.from_numpy(q.reshape(8, 8).T))
    out = npz["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"]
    assert torch.equal(s["transformer.encoder.layer.0.attn.out.weight"], torch.from_numpy(out.reshape(8, 8).T))
    assert torch.equal(s["transformer.encoder.layer.0.ffn.fc2.weight"],
                       torch.from_numpy(npz["Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"].T))
    assert torch.equal(s["transformer.embeddings.position_embeddings"],
                       torch.from_numpy(npz["Transformer/posembed_input/pos_embedding"][:, 1:]))
    proj = npz["block2/unit1/conv_proj/kernel"]  # HWIO -> OIHW
    assert torch.equal(s["transformer.embeddings.hybrid_model.body.block2.unit1.downsample.weight"],
                       torch.from_numpy(proj.transpose(3, 2, 0, 1)))
    assert torch.equal(s["transformer.embeddings.hybrid_model.body.block2.unit2.gn3.bias"],
                       torch.from_numpy(npz["block2/unit2/gn3/bias"].reshape(-1)))
    stem = torch.from_numpy(npz["conv_root/kernel"].transpose(3, 2, 0, 1))
    ours = s["transformer.embeddings.hybrid_model.root.conv.weight"]
    assert ours.shape[1] == 2 and torch.allclose(ours[:, 0], stem.sum(1) / 2) and torch.equal(ours[:, 0], ours[:, 1])


def test_npz_position_embeddings_are_resized_and_wrong_sizes_are_refused():
    torch.manual_seed(0)
    model = TransUNet(2, 4, **{**TINY, "img_size": 64})  # 4 x 4 tokens from a 2 x 2 (+ class token) grid
    npz = _official_npz(TransUNet(2, 4, **TINY), np.random.default_rng(1))
    load_imagenet21k(model, npz)
    grid = torch.from_numpy(npz["Transformer/posembed_input/pos_embedding"][0, 1:]).reshape(2, 2, -1)
    resized = model.state_dict()["transformer.embeddings.position_embeddings"].reshape(4, 4, -1)
    assert torch.allclose(resized[0, 0], grid[0, 0]) and torch.allclose(resized[-1, -1], grid[-1, -1])
    assert torch.allclose(resized[0, 1], grid[0, 0] + (grid[0, 1] - grid[0, 0]) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="do not fit"):
        load_imagenet21k(TransUNet(2, 4, **{**TINY, "hidden": 16, "mlp_dim": 16}), npz)


def test_poly_rate_decays_per_iteration(stores, tmp_path):
    """The logged rate of each epoch is that of its last iteration: lr (1 - it / max_it)^0.9."""
    from conftest import run_tiny_pipeline, tiny_plan

    run_tiny_pipeline(tiny_plan(), "brats", "transunet", stores, tmp_path)
    log = pd.read_csv(tmp_path / "train_log.csv")
    per_epoch, epochs = 2, len(log)  # the tiny plan: 2 batches an epoch, warmup + bilevel = 2 epochs
    total = per_epoch * epochs
    expected = [0.01 * (1 - (e * per_epoch + per_epoch - 1) / total) ** 0.9 for e in range(epochs)]
    assert epochs == 2 and np.allclose(log["lr"], expected)


def test_network_refuses_other_sizes_and_segment_maps_back():
    torch.manual_seed(0)
    method = Method({**Method.test_config})
    nets = {"segmenter": method.networks()["segmenter"].eval()}
    with torch.no_grad():
        assert method.segment(nets, torch.rand(2, 2, 50, 70)).shape == (2, 4, 50, 70)
        with pytest.raises(ValueError, match="expects 64 x 64"):
            nets["segmenter"](torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        TransUNet(2, 4, **{**TINY, "img_size": 40})


def test_method_loads_a_local_npz_file(tmp_path):
    torch.manual_seed(0)
    npz = _official_npz(TransUNet(2, 4, **TINY), np.random.default_rng(1))
    np.savez(tmp_path / "R50+ViT-B_16.npz", **npz)
    torch.manual_seed(2)
    from_file = TransUNet(2, 4, **TINY)
    torch.manual_seed(2)
    from_dict = TransUNet(2, 4, **TINY)
    Method({**Method.test_config}).load_encoder(from_file, tmp_path / "R50+ViT-B_16.npz")
    load_imagenet21k(from_dict, npz)
    for name, value in from_dict.state_dict().items():
        assert torch.equal(from_file.state_dict()[name], value), name
