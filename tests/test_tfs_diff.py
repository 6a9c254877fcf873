"""TFS-Diff: the SR3 UNet's parameter counts against the reference's, its squeeze-excitation and attention against
hand computations, the pseudo-target's reconstruction and contrast, and a whole fusion's independence of the batch."""

from __future__ import annotations

import torch

from benchmark.methods import find_method, load_method
from methods._tfs_diff_net import SelfAttention, SqueezeExcitation, SR3UNet, laplacian_pyramid_fusion


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_reference_configurations():
    with torch.device("meta"):  # full size, no memory
        assert _count(SR3UNet(12, 3)) == 97_811_034  # three RGB conditions (the repository's config)
        assert _count(SR3UNet(5, 3)) == 97_806_931  # two grey conditions, 3 output channels
        assert _count(SR3UNet(3, 1)) == 97_804_619  # ours: two grey conditions, one grey output


def test_squeeze_excitation_gates_channels_by_hand():
    se = SqueezeExcitation(3, 4)  # 3 // 4 = 0: one hidden unit is kept
    assert se.gate[2].out_features == 1
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    lin1, lin2 = se.gate[2], se.gate[4]
    pooled = x.mean(dim=(2, 3))
    gates = torch.sigmoid(lin2(torch.relu(lin1(pooled))))
    assert torch.allclose(se(x), x * gates[:, :, None, None], atol=1e-6)


def test_self_attention_by_hand():
    torch.manual_seed(0)
    attention = SelfAttention(8, 4).eval()
    x = torch.randn(1, 8, 3, 5)
    q, k, v = attention.qkv(attention.norm(x)).reshape(1, 3, 8, 15).unbind(1)  # (1, C, HW) each
    weights = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k) / 8 ** 0.5, dim=-1)
    expected = attention.out(torch.einsum("bnm,bcm->bcn", weights, v).reshape(1, 8, 3, 5)) + x
    assert torch.allclose(attention(x), expected, atol=1e-5)


def test_unet_keeps_the_size_at_its_stride():
    net = SR3UNet(3, 1, inner=8, mults=(1, 2, 2), res_blocks=1, attention_levels=(1,), norm_groups=4).eval()
    out = net(torch.randn(2, 3, 12, 20), torch.tensor([0.3, 0.9]))
    assert out.shape == (2, 1, 12, 20)


def test_pseudo_target_reconstructs_equal_sources_and_keeps_the_stronger_edge():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 1, 17, 22, generator=g)
    assert torch.allclose(laplacian_pyramid_fusion(a, a, 4), a, atol=1e-5)
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1.0
    flat = torch.full_like(step, 0.5)
    fused = laplacian_pyramid_fusion(step, flat, 4)
    assert float(fused[..., 24:].mean() - fused[..., :8].mean()) > 0.7  # the average: 0.5


def test_sampling_with_the_exact_noise_returns_the_target():
    """The DDIM loop (schedule, noise levels given to the network, clamping, [-1, 1] -> [0, 1]) recovers x0 when
    the network predicts the true noise of a known target."""
    method = load_method("tfs_diff", {**find_method("tfs_diff").test_config, "sampling_steps": 10})
    target = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4))

    class ExactNoise(torch.nn.Module):
        def forward(self, x, level):
            noisy, g = x[:, 2:], level[:, None, None, None]
            return (noisy - g * (target * 2 - 1)) / (1 - g ** 2).sqrt()

    fused = method.fuse({"fusion": ExactNoise()}, torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    assert torch.allclose(fused, target, atol=1e-4)
