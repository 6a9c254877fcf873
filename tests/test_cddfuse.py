"""CDDFuse: its losses against hand computations (kornia 0.2.0's SSIM and SpatialGradient, CDDFuse's Sobelxy), the
exact blocks and parameter counts of its network, its learning-rate schedule and its per-module clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.methods import find_method, load_method
from benchmark.training.losses import sobel_gradient
from methods._cddfuse_losses import gaussian_window, sobel_magnitude, spatial_gradient, ssim_loss
from methods._cddfuse_net import CDDFuseNet, DetailNode, LiteTransformer
from methods.cddfuse import clip_each_and_step, learning_rates

C1, C2 = 0.01**2, 0.03**2


# --------------------------------------------------------------------------------------------- losses


def _ssim_loss_by_hand(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """kornia 0.2.0 SSIM loss of two 2-D images, written with explicit window sums over reflect-padded arrays."""
    g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    window = np.outer(g / g.sum(), g / g.sum())
    pad = size // 2
    xp, yp = np.pad(x, pad, mode="reflect"), np.pad(y, pad, mode="reflect")
    losses = []
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            wx, wy = xp[i:i + size, j:j + size], yp[i:i + size, j:j + size]
            mx, my = (window * wx).sum(), (window * wy).sum()
            vx = (window * wx * wx).sum() - mx**2
            vy = (window * wy * wy).sum() - my**2
            cxy = (window * wx * wy).sum() - mx * my
            s = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx**2 + my**2 + C1) * (vx + vy + C2))
            losses.append(min(max(1 - s, 0.0), 1.0) / 2)
    return float(np.mean(losses))


def test_ssim_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 1, 13, 16, generator=g), torch.rand(1, 1, 13, 16, generator=g)
    expected = _ssim_loss_by_hand(x[0, 0].double().numpy(), y[0, 0].double().numpy())
    assert ssim_loss(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_loss_of_constant_images_and_of_identical_images():
    x, y = torch.full((2, 1, 12, 12), 0.2), torch.full((2, 1, 12, 12), 0.6)
    ssim = (2 * 0.2 * 0.6 + C1) / (0.2**2 + 0.6**2 + C1)  # no variance: the contrast term is C2 / C2
    assert ssim_loss(x, y).item() == pytest.approx((1 - ssim) / 2, abs=1e-4)  # float32 variances ~1e-8, not 0
    z = torch.rand(2, 1, 12, 12)
    assert ssim_loss(z, z).item() == pytest.approx(0.0, abs=1e-6)


def test_ssim_loss_clamps_before_halving_as_kornia_0_2():
    # anti-correlated images: SSIM < 0 everywhere, so clamp(1 - SSIM, 0, 1) / 2 = 0.5 (clamp((1 - SSIM) / 2) > 0.5)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2
    x = checker.float()[None, None]
    assert ssim_loss(x, 1 - x).item() == pytest.approx(0.5, abs=1e-6)


def test_ssim_loss_names_too_small_images():
    with pytest.raises(ValueError, match="reflect padding"):
        ssim_loss(torch.rand(1, 1, 5, 20), torch.rand(1, 1, 5, 20))


def test_gaussian_window_is_kornias():
    w = gaussian_window(3)
    g = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / (2 * 1.5**2))
    assert torch.allclose(w, torch.outer(g, g) / g.sum() ** 2)
    assert w.sum().item() == pytest.approx(1.0)


def test_spatial_gradient_of_a_ramp():
    # x[i, j] = j: d/dx = (1 + 2 + 1) * 2 / 8 = 1 inside, 0.5 on the left / right columns (replicate padding)
    x = torch.arange(6.0).repeat(5, 1)[None, None]
    grad = spatial_gradient(x)
    assert grad.shape == (1, 1, 2, 5, 6)
    dx, dy = grad[0, 0]
    assert torch.allclose(dx[:, 1:-1], torch.ones(5, 4))
    assert torch.allclose(dx[:, 0], torch.full((5,), 0.5)) and torch.allclose(dx[:, -1], torch.full((5,), 0.5))
    assert torch.allclose(dy, torch.zeros(5, 6))
    assert torch.allclose(spatial_gradient(x.transpose(-2, -1))[0, 0, 1], dx.T)  # d/dy of the transposed ramp


def test_sobel_magnitude_is_cddfuses_zero_padded_sobelxy():
    x = (torch.arange(6.0) + 1).repeat(5, 1)[None, None]  # x[i, j] = j + 1
    mag = sobel_magnitude(x)[0, 0]
    assert torch.allclose(mag[1:-1, 1:-1], torch.full((3, 4), 8.0))  # |Gx| = 2 * (1 + 2 + 1), Gy = 0
    # left column, middle row: the zero padding reads 0 left of x = 1: Gx = (1 + 2 + 1) * (2 - 0) = 8 (replicate: 4)
    assert mag[2, 0].item() == pytest.approx(8.0)
    # top-left corner: rows above are zero: Gx = 2 * 2 + 1 * 2 = 6, Gy = -(2 * 1 + 1 * 2) = -4 -> 10
    assert mag[0, 0].item() == pytest.approx(10.0)
    # inside the border it is the shared (replicate-padded) Sobel magnitude
    shared = sobel_gradient(x)[0, 0]
    assert torch.allclose(mag[1:-1, 1:-1], shared[1:-1, 1:-1])


# --------------------------------------------------------------------------------------------- network


def test_full_size_network_has_cddfuses_parameter_counts():
    net = CDDFuseNet()

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(net.encoder) == 599_144
    assert count(net.encoder.base) == count(net.fuse_base) == 363_016
    assert count(net.encoder.detail) == 54_528 and count(net.fuse_detail) == 18_176
    assert count(net.decoder) == 207_936
    assert count(net) == find_method("cddfuse").reference["parameters"] == 1_188_272


def test_lite_transformer_mlp_groups_channels_in_pairs():
    block = LiteTransformer(8, 2)
    assert block.ffn.dwconv.groups == 8 and block.ffn.dwconv.weight.shape == (16, 2, 3, 3)
    assert block.attn.qkv_conv.groups == 1  # dense 3 x 3 qkv convolution


def test_detail_node_is_cddfuses_unbounded_affine_coupling():
    torch.manual_seed(0)
    node = DetailNode(4)
    with torch.no_grad():
        node.mix.weight.copy_(torch.eye(4)[:, :, None, None])
        node.mix.bias.zero_()
        node.rho.body[-1].weight.mul_(50.0)  # a large log-scale: no tanh bound
    x = torch.randn(1, 4, 5, 6)
    z1, z2 = x[:, :2], x[:, 2:]
    z2 = z2 + node.phi(z1)
    z1 = z1 * torch.exp(node.rho(z2)) + node.eta(z2)
    out = node(x)
    assert torch.allclose(out, torch.cat((z1, z2), dim=1), rtol=1e-5, atol=1e-6)
    assert node.rho(z2).abs().max() > 2.0  # the shared INN would clamp this scale to e^2


def test_network_reconstructs_and_fuses_any_size():
    net = CDDFuseNet(dim=8, heads=2, encoder_blocks=1, decoder_blocks=1, detail_nodes=1).eval()
    a, b = torch.rand(2, 1, 9, 14), torch.rand(2, 1, 9, 14)
    with torch.no_grad():
        a_hat, b_hat, feats = net.reconstruct(a, b)
        fused, _ = net(a, b)
        # one batch through the encoder equals separate calls (no batch statistics)
        base_a, detail_a = net.encoder(a)
    assert a_hat.shape == b_hat.shape == fused.shape == (2, 1, 9, 14)
    assert torch.allclose(feats.base_a, base_a, atol=1e-6) and torch.allclose(feats.detail_a, detail_a, atol=1e-6)
    assert 0 < float(fused.min()) and float(fused.max()) < 1  # sigmoid, before the min-max step


def test_fuse_is_min_max_normalised_per_image():
    method = load_method("cddfuse", find_method("cddfuse").test_config)
    nets = {k: v.eval() for k, v in method.networks().items()}
    with torch.no_grad():
        out = method.fuse(nets, torch.rand(3, 1, 12, 10), torch.rand(3, 1, 12, 10))
    assert torch.allclose(out.amin(dim=(1, 2, 3)), torch.zeros(3))
    assert torch.allclose(out.amax(dim=(1, 2, 3)), torch.ones(3))


# --------------------------------------------------------------------------------------------- recipe


def test_learning_rates_follow_cddfuses_two_step_schedules():
    h = find_method("cddfuse").hyperparameters
    assert learning_rates(h, 0) == (1e-4, 1e-4)
    assert learning_rates(h, 39) == pytest.approx((5e-5, 1e-4))
    assert learning_rates(h, 40) == pytest.approx((2.5e-5, 1e-4))  # fusion layers start their StepLR in phase II
    assert learning_rates(h, 60) == pytest.approx((1.25e-5, 5e-5))
    assert learning_rates(h, 119) == pytest.approx((1e-4 * 0.5**5, 1e-4 * 0.5**3))
    assert learning_rates({**h, "phase1_epochs": 0}, 200)[0] == 1e-6  # the floor


class _NoScaler:
    scaler = None


class _KeepGradients:
    """Stands in for an optimiser (building a torch one imports torch._dynamo, seconds): step leaves the gradients."""

    def zero_grad(self, set_to_none=True):
        pass

    def step(self):
        pass


def test_each_module_is_clipped_on_its_own():
    torch.manual_seed(0)
    first, second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    loss = 100 * first(torch.ones(1, 4)).square().sum() + 1000 * second(torch.ones(1, 4)).square().sum()
    clip_each_and_step(_NoScaler(), loss, _KeepGradients(), [first, second], 0.01)

    def norm(m):
        return math.sqrt(sum(p.grad.square().sum().item() for p in m.parameters()))

    assert norm(first) == pytest.approx(0.01, rel=1e-4) and norm(second) == pytest.approx(0.01, rel=1e-4)
