"""Fuse4Seg networks: exact INN inversion, output shapes and ranges at odd / even sizes, gradient flow, determinism."""

from __future__ import annotations

import pytest
import torch

from benchmark.nn.convnext_unet import SegmentationFollower
from methods._fuse4seg_leader import FusionLeader, LeaderOutput, minmax_per_image
from benchmark.nn.inn import AffineCoupling, HaarSqueeze, INNBlock, InvertibleConv1x1
from benchmark.nn.restormer import ChannelAttention, LayerNorm2d, TransformerBlock, pad_to_multiple

SIZES = [(16, 16), (17, 15)]
TINY_LEADER = dict(dim=8, heads=2, encoder_blocks=1, decoder_blocks=1, inn_nodes=2)
TINY_FOLLOWER = dict(dims=(8, 16, 16), depths=(1, 1, 1), bottleneck_heads=2)


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so that identity-like initialisations cannot hide a wrong inverse."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


# --------------------------------------------------------------------------------------------- INN


@pytest.mark.parametrize("layer", ["conv1x1", "coupling", "haar"])
def test_each_invertible_layer_inverts_exactly(layer):
    torch.manual_seed(0)
    build = {"conv1x1": lambda: InvertibleConv1x1(8), "coupling": lambda: AffineCoupling(8), "haar": HaarSqueeze}
    module = build[layer]()
    module = _randomise(module.double())
    x = torch.randn(2, 8, 16, 14, dtype=torch.float64)
    y = module(x)
    assert not torch.allclose(y.reshape(x.shape), x)  # the layer does something
    assert (module.inverse(y) - x).abs().max() < 1e-5


@pytest.mark.parametrize(("haar", "size"), [(False, (16, 16)), (False, (17, 15)), (True, (16, 14))])
def test_inn_stack_inverts_exactly(haar, size):
    torch.manual_seed(1)
    block = _randomise(INNBlock(8, num_nodes=3, haar=haar).double())
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    y = block(x)
    assert y.shape == x.shape
    assert (y - x).abs().max() > 1e-2
    assert (block.inverse(y) - x).abs().max() < 1e-5


def test_coupling_follows_eq5():
    """z2' = z2 + phi(z1); z1' = z1 * exp(s(z2')) + eta(z2') on the mixed channels, recomputed by hand."""
    torch.manual_seed(2)
    node = _randomise(AffineCoupling(6).double())
    x = torch.randn(1, 6, 9, 7, dtype=torch.float64)
    z1, z2 = node.mix(x).chunk(2, dim=1)
    z2p = z2 + node.phi(z1)
    s = node.scale_clamp * torch.tanh(node.rho(z2p) / node.scale_clamp)
    z1p = z1 * torch.exp(s) + node.eta(z2p)
    assert torch.allclose(node(x), torch.cat((z1p, z2p), dim=1))


def test_haar_squeeze_low_band_is_local_mean():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    bands = HaarSqueeze()(x)
    assert bands.shape == (1, 4, 2, 2)
    # orthonormal Haar: LL = 2 x mean of each 2 x 2 block
    assert torch.allclose(bands[:, 0], 2.0 * torch.nn.functional.avg_pool2d(x, 2)[:, 0])


def test_inn_rejects_odd_channels():
    with pytest.raises(ValueError):
        AffineCoupling(7)


# --------------------------------------------------------------------------------------------- Restormer blocks


def test_layernorm2d_matches_torch_layernorm_and_biasfree_is_scale_only():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 7, 3)
    ln = _randomise(LayerNorm2d(5))
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (5,), ln.weight, ln.bias, ln.eps).permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), ref, atol=1e-6)
    bias_free = LayerNorm2d(5, bias=False)
    assert len(list(bias_free.parameters())) == 1
    # BiasFree divides by the channel std but keeps the mean: shifting by a constant is not removed
    assert not torch.allclose(bias_free(x + 3.0), bias_free(x), atol=1e-3)
    assert torch.allclose(ln(x + 3.0), ln(x), atol=1e-4)


def test_channel_attention_is_size_agnostic_and_dense_qkv_has_more_weights():
    torch.manual_seed(4)
    depthwise, dense = ChannelAttention(8, 2), ChannelAttention(8, 2, dense_qkv=True)
    assert sum(p.numel() for p in dense.parameters()) > sum(p.numel() for p in depthwise.parameters())
    block = TransformerBlock(8, 2)
    for h, w in [(1, 1), (5, 3), (16, 16)]:
        assert block(torch.randn(1, 8, h, w)).shape == (1, 8, h, w)


def test_pad_to_multiple_pads_and_reports_size():
    x = torch.randn(1, 1, 17, 15)
    padded, (h, w) = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (24, 16) and (h, w) == (17, 15)
    assert torch.equal(padded[..., :h, :w], x)
    same, _ = pad_to_multiple(x, 1)
    assert same is x
    tiny, _ = pad_to_multiple(torch.randn(1, 1, 3, 3), 8)  # pad > size: falls back to replicate
    assert tiny.shape[-2:] == (8, 8)


# --------------------------------------------------------------------------------------------- leader


@pytest.mark.parametrize("haar", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_leader_output_is_single_channel_in_unit_range(size, haar):
    torch.manual_seed(5)
    leader = FusionLeader(**TINY_LEADER, inn_haar=haar)
    a, b = torch.rand(2, 1, *size), torch.rand(2, 1, *size)
    out = leader(a, b)
    assert isinstance(out, LeaderOutput)
    assert out.fused.shape == (2, 1, *size)
    for feat in (out.low_a, out.high_a, out.low_b, out.high_b):
        assert feat.shape == (2, 8, *size)
    assert out.fused.min() >= 0.0 and out.fused.max() <= 1.0
    # per-image min-max: each image reaches both ends of the range
    flat = out.fused.flatten(1)
    assert torch.allclose(flat.amin(1), torch.zeros(2)) and torch.allclose(flat.amax(1), torch.ones(2))


def test_minmax_is_per_image_and_guards_constant_images():
    y = torch.stack([torch.full((1, 3, 3), 5.0), torch.arange(9.0).reshape(1, 3, 3)])
    out = minmax_per_image(y)
    assert torch.all(out[0] == 0.0)
    assert torch.allclose(out[1].flatten(), torch.arange(9.0) / 8.0)


def test_leader_is_anchor_free():
    """The output does not contain the inputs by construction: zeroing the decoder output layer gives a constant."""
    torch.manual_seed(6)
    leader = FusionLeader(**TINY_LEADER)
    with torch.no_grad():
        leader.output[2].weight.zero_()
    out = leader(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    assert torch.all(out.fused == 0.0)


def test_leader_sources_share_the_encoder_and_fusion_is_symmetric():
    torch.manual_seed(7)
    leader = FusionLeader(**TINY_LEADER)
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    ab, ba = leader(a, b), leader(b, a)
    # same encoder for both sources -> swapping them swaps the features and leaves the fused image unchanged
    assert torch.allclose(ab.low_a, ba.low_b) and torch.allclose(ab.high_a, ba.high_b)
    assert torch.allclose(ab.fused, ba.fused, atol=1e-5)


def test_gradients_reach_every_leader_parameter():
    torch.manual_seed(8)
    leader = FusionLeader(**TINY_LEADER, bias=True)
    out = leader(torch.rand(2, 1, 17, 15), torch.rand(2, 1, 17, 15))
    (out.fused * torch.randn_like(out.fused)).sum().backward()
    missing = [n for n, p in leader.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_leader_full_size_parameter_count_is_cddfuse_scale():
    n = sum(p.numel() for p in FusionLeader().parameters())
    assert 1.0e6 < n < 1.5e6  # CDDFuse: encoder + decoder + fusion layers ~1.2 M


# --------------------------------------------------------------------------------------------- follower


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("size", SIZES + [(5, 7)])
def test_follower_logits_shape(size, in_channels):
    torch.manual_seed(9)
    follower = SegmentationFollower(in_channels=in_channels, num_classes=4, **TINY_FOLLOWER)
    logits = follower(torch.rand(3, in_channels, *size))
    assert logits.shape == (3, 4, *size)
    assert torch.isfinite(logits).all()


def test_follower_default_depth_levels():
    follower = SegmentationFollower()
    assert follower.pad_multiple == 8 and len(follower.encoder) == 3
    assert follower(torch.rand(1, 1, 20, 12)).shape == (1, 4, 20, 12)


def test_follower_rejects_mismatched_depths():
    with pytest.raises(ValueError):
        SegmentationFollower(dims=(8, 16), depths=(1, 1, 1))


def test_gradients_reach_every_follower_parameter():
    torch.manual_seed(10)
    follower = SegmentationFollower(**TINY_FOLLOWER)
    x = torch.rand(2, 1, 17, 15, requires_grad=True)
    logits = follower(x)
    (logits * torch.randn_like(logits)).sum().backward()
    missing = [n for n, p in follower.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert x.grad.abs().sum() > 0  # the semantic gradient reaches the fused image (bi-level training needs it)


def test_follower_bottleneck_attention_is_global():
    """Changing one corner pixel changes the logits at the opposite corner (MSA at the lowest resolution)."""
    torch.manual_seed(11)
    follower = _randomise(SegmentationFollower(dims=(4, 8), depths=(0, 0), bottleneck_heads=2)).eval()
    x = torch.rand(1, 1, 32, 32)
    y = x.clone()
    y[..., 0, 0] += 1.0
    with torch.no_grad():
        diff = (follower(x) - follower(y))[..., -1, -1].abs().max()
    assert diff > 0


# --------------------------------------------------------------------------------------------- determinism / AMP


def test_fixed_seed_gives_identical_outputs():
    def run():
        torch.manual_seed(12)
        leader, follower = FusionLeader(**TINY_LEADER), SegmentationFollower(**TINY_FOLLOWER)
        a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
        fused = leader(a, b).fused
        return fused, follower(fused)

    (f1, l1), (f2, l2) = run(), run()  # same weights and inputs; the sums may round differently across threads
    assert torch.allclose(f1, f2, rtol=1e-5, atol=1e-6) and torch.allclose(l1, l2, rtol=1e-5, atol=1e-5)


def test_bfloat16_autocast_runs_and_stays_close():
    torch.manual_seed(13)
    leader, follower = FusionLeader(**TINY_LEADER).eval(), SegmentationFollower(**TINY_FOLLOWER).eval()
    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        ref = leader(a, b).fused
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused = leader(a, b).fused
            logits = follower(fused)
    assert fused.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (fused - ref).abs().mean() < 0.05
