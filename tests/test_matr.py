"""MATR: the network against literal transcriptions of its official computations (unfold adaptive convolution,
view-as-BHWC tokens, single-token attention), its SSIM and RMI against hand computations, and the source roles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.methods import find_method, load_method
from methods._matr_losses import region_mutual_information, rmi_loss, ssim_loss
from methods._matr_net import AdaptiveConv3x3, MATRNet, TokenAttention, TokenTransformer

# --------------------------------------------------------------------------------------------- network


def _official_adaptive_conv(conv: AdaptiveConv3x3, x: torch.Tensor) -> torch.Tensor:
    """MATR's ``layers.Conv2d.forward`` (kernel 3) step by step, with its g > 3 / else branches and unfold matmul."""
    b, c, h, w = x.shape
    oc = conv.out_channels
    ce2 = conv.ce(F.adaptive_avg_pool2d(x, 3).view(b, c, -1))
    out = conv.gd(F.relu(conv.ce_bn(ce2)))
    if conv.group > 3:
        g = conv.group
        att = conv.ci(F.relu(conv.ci_bn2(ce2).view(b, c // g, g, -1).transpose(2, 3))).transpose(2, 3).contiguous()
    else:
        att = conv.ci(F.relu(conv.ci_bn2(ce2).transpose(2, 1))).transpose(2, 1).contiguous()
    att = conv.gd2(F.relu(conv.ci_bn(att.view(b, oc, -1))))
    out = torch.sigmoid(out.view(b, 1, c, 3, 3) + att.view(b, oc, 1, 3, 3))
    x_un = F.unfold(x, 3, padding=1)
    out = (out * conv.conv.weight.unsqueeze(0)).view(b, oc, -1)
    return torch.matmul(out, x_un).view(b, oc, h, w)  # MATR: view(b, oc, sqrt(L), sqrt(L)), square inputs only


@pytest.mark.parametrize("in_channels, out_channels", [(2, 16), (16, 16), (32, 16)])
def test_adaptive_conv_equals_matrs_unfold_formulation(in_channels, out_channels):
    torch.manual_seed(0)
    conv = AdaptiveConv3x3(in_channels, out_channels).train()
    x = torch.randn(3, in_channels, 10, 10)
    ours = conv(x)
    assert torch.allclose(ours, _official_adaptive_conv(conv, x), rtol=1e-4, atol=1e-5)
    assert conv(torch.randn(2, in_channels, 7, 12)).shape == (2, out_channels, 7, 12)  # non-square works


def test_tokens_are_matrs_view_of_a_bchw_map_as_bhwc():
    torch.manual_seed(0)
    layer = TokenTransformer(dim=4, heads=2, depth=2, mlp_ratio=4.0)
    x = torch.randn(2, 4, 3, 5)
    b, c, h, w = x.shape
    tokens = x.view(b, h, w, c)  # MATR: x.view(B, H, W, C) on a (B, C, H, W) tensor
    expected = layer.blocks(tokens.reshape(-1, c)).view(b, h, w, c).view(b, c, h, w)
    assert torch.allclose(layer(x), expected)
    # a token mixes neighbouring pixels of one channel, not the channels of one pixel
    assert torch.equal(tokens.reshape(-1, c)[0], x[0, 0, 0, :4])


def test_single_token_attention_is_the_projected_value():
    torch.manual_seed(0)
    attn = TokenAttention(16, 8)
    x = torch.randn(5, 16)
    v = attn.qkv(x)[:, 32:]
    assert torch.allclose(attn(x), attn.proj(v), atol=1e-6)


def test_full_size_parameter_count():
    count = sum(p.numel() for p in MATRNet().parameters())
    assert count == 13_230
    assert count + 2 * 96 == find_method("matr").reference["parameters"]  # + MATR's unused LayerNorm(96)


def test_method_stacks_functional_then_anatomical_and_clamps():
    method = load_method("matr", find_method("matr").test_config)
    nets = {k: v.eval() for k, v in method.networks().items()}
    a, b = torch.rand(2, 1, 12, 17), torch.rand(2, 1, 12, 17)
    with torch.no_grad():
        raw = nets["fusion"](torch.cat((b, a), dim=1))  # (ir, vi) = (functional, anatomical)
        fused = method.fuse(nets, a, b)
    assert torch.equal(fused, raw.clamp(0, 1))
    assert fused.shape == (2, 1, 12, 17)


# --------------------------------------------------------------------------------------------- losses


def test_ssim_of_constant_images_by_hand_with_matrs_guessed_range():
    # constant images: no variance, so SSIM = (2 mu_f mu_s + C1) / (mu_f^2 + mu_s^2 + C1) with C1 = (0.01 L)^2
    for value, source, value_range in ((0.2, 0.6, 1.0), (-0.6, 0.0, 2.0)):  # below -0.5: MATR takes L = 2
        c1 = (0.01 * value_range) ** 2
        expected = 1 - (2 * value * source + c1) / (value**2 + source**2 + c1)
        fused = torch.full((1, 1, 12, 12), value)
        assert ssim_loss(fused, torch.full((1, 1, 12, 12), source)).item() == pytest.approx(expected, abs=1e-4)
    assert 1 - 1e-4 / (0.36 + 1e-4) - expected > 5e-4  # the last case tells L = 2 from L = 1


def test_ssim_uses_valid_positions_of_a_window_shrunk_to_the_image():
    # an 8 x 30 image: window 8, valid output 1 x 23; a step in the right part of the image is seen only there
    x = torch.zeros(1, 1, 8, 30)
    y = x.clone()
    y[..., 25:] = 1.0
    assert ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    loss = ssim_loss(x, y).item()
    positions_touching_the_step = 23 - 18  # windows starting at columns 18..22 reach column 25
    assert 0 < loss <= positions_touching_the_step / 23 + 1e-6


def _rmi_by_hand(pred: np.ndarray, target: np.ndarray, eps: float = 5e-4) -> float:
    """RMI of one 2-D map pair with explicit loops: 3 x 3 max pooling (stride 3, padding 1), 3 x 3 regions."""

    def pool(x):
        padded = np.pad(x, 1, constant_values=-np.inf)
        rows, cols = (x.shape[0] - 1) // 3 + 1, (x.shape[1] - 1) // 3 + 1
        return np.array([[padded[3 * i:3 * i + 3, 3 * j:3 * j + 3].max() for j in range(cols)] for i in range(rows)])

    def regions(x):
        x = pool(x)
        vecs = np.array([x[i:i + 3, j:j + 3].ravel() for i in range(x.shape[0] - 2) for j in range(x.shape[1] - 2)]).T
        return vecs - vecs.mean(axis=1, keepdims=True)  # (9, L)

    y, p = regions(target), regions(pred)
    eye = np.eye(9) * eps
    m = y @ y.T - (y @ p.T) @ np.linalg.inv(p @ p.T + eye).T @ (y @ p.T).T
    _, logdet = np.linalg.slogdet(m + eye)
    return 0.5 * logdet / 9


def test_region_mutual_information_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 16, 20, generator=g)
    pred = (0.5 * target + 0.5 * torch.rand(2, 1, 16, 20, generator=g))
    expected = np.mean([_rmi_by_hand(pred[i, 0].double().numpy(), target[i, 0].double().numpy()) for i in range(2)])
    assert region_mutual_information(pred, target).item() == pytest.approx(expected, rel=1e-6, abs=1e-8)
    # a prediction that explains the target leaves less posterior uncertainty than noise does
    assert region_mutual_information(target, target) < region_mutual_information(torch.rand_like(target), target)


def test_rmi_loss_is_half_bce_with_logits_and_half_rmi_of_the_sigmoid():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(2, 1, 12, 12, generator=g), torch.rand(2, 1, 12, 12, generator=g)
    expected = 0.5 * F.binary_cross_entropy_with_logits(logits, target) + 0.5 * region_mutual_information(
        torch.sigmoid(logits), target)
    assert rmi_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="at least 7 pixels"):
        rmi_loss(torch.randn(1, 1, 6, 12), torch.rand(1, 1, 6, 12))
