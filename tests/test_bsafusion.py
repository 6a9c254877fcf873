"""BSAFusion pieces the contract tests cannot see: the parameter count against the official code's, the code's
attention and loss quirks against naive re-computations, the warp, the synthetic misalignment, the epoch hooks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.methods import load_method
from methods._bsafusion_net import BSAFusionNet, ChannelAttention, CrossTokenTransfer, integrate_flows, warp
from methods._bsafusion_train import _gaussian, bsafusion_loss, flow_loss, smoothness, ssim_loss, synthetic_flow
from methods.bsafusion import Method

REFERENCE = 10_028_296
REFERENCE_FROZEN = 1_119_490


def tiny_net(**overrides) -> BSAFusionNet:
    method = load_method("bsafusion", {**load_method("bsafusion").test_config, **overrides})
    return method.networks()["fusion"]


@pytest.fixture(scope="module")
def full_net() -> BSAFusionNet:
    torch.manual_seed(0)
    return load_method("bsafusion").networks()["fusion"].eval()


def test_full_size_parameters_are_the_reference_minus_the_weights_it_never_uses(full_net):
    net = full_net
    ours = sum(p.numel() for p in net.parameters())
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    hidden, patch, deep = 256, 16, 3
    embedding = deep * hidden * patch * patch + hidden + 256 * 256  # the discriminator's patch conv + position map
    layer_norms = 2 * hidden * (8 + 2)  # norm_layer1 of 8 ViT blocks; final norm of classifier and discriminator
    last_up = 2 * (8 * 1 + 1)  # the last RegNet level's 1 x 1 up-conv (8 -> 1), output discarded, per image
    assert ours + embedding + layer_norms + last_up == REFERENCE
    assert frozen + embedding + hidden * 2 * 3 == REFERENCE_FROZEN  # + the discriminator's three unused norms
    assert Method.reference["parameters"] == REFERENCE


def test_full_size_shapes_at_64_pixels(full_net):
    with torch.no_grad():
        out = full_net.run(torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64), discriminate=True)
    assert [tuple(f.shape[-2:]) for f in out.flows[::2]] == [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64)]
    assert out.flow.shape == (1, 2, 64, 64) and out.fused.shape == (1, 1, 64, 64)
    assert out.logits.shape == out.discriminated.shape == (2, 2)
    assert 0 <= float(out.fused.min()) and float(out.fused.max()) <= 1


def test_sizes_not_multiple_of_16_are_refused_by_run_and_padded_by_forward():
    net = tiny_net().eval()
    with pytest.raises(ValueError, match="multiples of 16"):
        net.run(torch.rand(1, 1, 20, 32), torch.rand(1, 1, 20, 32))
    with torch.no_grad():
        assert net(torch.rand(1, 1, 20, 37), torch.rand(1, 1, 20, 37)).shape == (1, 1, 20, 37)


def test_channel_attention_is_the_codes_mdta():
    """The code's layout: q, v as (B, HW, C), k as (B, C, HW); A = k @ q, softmax over all C^2 entries; v @ A."""
    torch.manual_seed(0)
    block = ChannelAttention(5)
    x = torch.randn(2, 5, 6, 7)
    y = F.layer_norm(x, x.shape[-2:])
    q = block.q(y).flatten(2).transpose(1, 2)
    k = block.k(y).flatten(2)
    v = block.v(y).flatten(2).transpose(1, 2)
    attn = torch.softmax((k @ q).reshape(2, -1), dim=1).reshape(2, 5, 5)
    expected = x + block.out((v @ attn).transpose(1, 2).reshape(2, 5, 6, 7))
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_transfer_reads_tokens_from_index_one_as_the_code_does():
    """With no blocks the stage is visible: tokens 1..N-1 (plus the other image's class token), then its own."""
    transfer = CrossTokenTransfer(dim=4, heads=2, mlp_dim=4, blocks=0)
    with torch.no_grad():
        transfer.cls_a.fill_(7.0)
    tokens_a, tokens_b = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    cls_a, cls_b = torch.randn(1, 4), torch.randn(1, 4)
    out_a, _ = transfer(tokens_a, tokens_b, cls_a, cls_b)
    assert out_a.shape == tokens_a.shape
    assert torch.allclose(out_a[:, :2], tokens_a[:, 1:] + cls_b[:, None])
    assert torch.all(out_a[:, 2] == 7.0)


def test_warp_identity_shift_and_border():
    x = torch.arange(30.0).view(1, 1, 5, 6)
    zero = torch.zeros(1, 2, 5, 6)
    assert torch.allclose(warp(x, zero), x, atol=1e-5)
    right = zero.clone()
    right[:, 0] = 1.0  # sample one pixel to the right
    assert torch.allclose(warp(x, right)[..., :-1], x[..., 1:], atol=1e-5)
    assert torch.all(warp(x, right)[..., -1] == 0)  # zeros outside (features)
    assert torch.allclose(warp(x, right, "border")[..., -1], x[..., -1], atol=1e-5)  # clamped (images)
    down = zero.clone()
    down[:, 1] = 0.5
    assert torch.allclose(warp(x, down)[..., :-1, :], x[..., :-1, :] + 3.0, atol=1e-5)  # rows are 6 apart


def test_integrated_field_is_b_minus_a_in_full_size_pixels():
    sizes = [2, 4, 8, 16, 32]
    ones = [torch.ones(1, 2, s, s) for s in sizes for _ in range(2)]
    assert torch.allclose(integrate_flows(ones), torch.zeros(1, 2, 32, 32))
    only_b = [f * (i % 2) for i, f in enumerate(ones)]
    assert torch.allclose(integrate_flows(only_b), torch.full((1, 2, 32, 32), 16.0 + 8 + 4 + 2 + 1))


def test_ssim_loss_constant_images_and_one_window_by_hand():
    c1, c2 = 0.01**2, 0.03**2
    x, y = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6)
    expected = 1 - (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)
    assert float(ssim_loss(x, y)) == pytest.approx(expected, abs=2e-4)  # float32 variances of a constant
    torch.manual_seed(0)
    x, y = torch.rand(1, 1, 11, 11), torch.rand(1, 1, 11, 11)  # a single valid window
    g = _gaussian(11, 1.5, torch.device("cpu"))
    w = (g[:, None] * g[None, :]).double()
    xd, yd = x[0, 0].double(), y[0, 0].double()
    mx, my = (w * xd).sum(), (w * yd).sum()
    vx, vy, cxy = (w * xd * xd).sum() - mx**2, (w * yd * yd).sum() - my**2, (w * xd * yd).sum() - mx * my
    ssim = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert float(ssim_loss(x, y)) == pytest.approx(1 - float(ssim), abs=1e-5)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_flow_loss_pairs_consecutive_flows_as_the_code_does():
    torch.manual_seed(0)
    flows = [torch.zeros(1, 2, 4 * 2 ** (i // 2), 4 * 2 ** (i // 2)) for i in range(10)]
    field = torch.zeros(1, 2, 64, 64)
    rough = [f + torch.randn_like(f) for f in flows]
    assert float(flow_loss(flows[:6] + rough[6:], field)) == 0.0  # the H/2 and full-size flows are not regularised
    for i, weight in [(1, 1e-4 + 1e-3), (5, 1.0)]:
        mixed = [rough[j] if j == i else flows[j] for j in range(10)]
        assert float(flow_loss(mixed, field)) == pytest.approx(weight * float(smoothness(rough[i])), rel=1e-5)
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 2, 8, 8)
    assert float(smoothness(ramp)) == pytest.approx(1.0 / 3.0)  # unit horizontal steps, none vertical


def test_synthetic_flow_is_the_blurred_noise_resized():
    generator = torch.Generator().manual_seed(0)
    flow = synthetic_flow(2, (32, 24), generator, kernel=21, sigma=4.0, translate=0.0, device=torch.device("cpu"))
    noise = torch.rand(2, 2, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = _gaussian(21, 4.0, torch.device("cpu"))
    kernel = (g[:, None] * g[None, :]).expand(2, 1, 21, 21)
    blurred = F.conv2d(F.pad(noise, (10, 10, 10, 10), mode="reflect"), kernel, groups=2)
    expected = F.interpolate(blurred, size=(32, 24), mode="bilinear", align_corners=True)
    assert torch.allclose(flow, expected * torch.tensor([24.0, 32.0]).view(1, 2, 1, 1), atol=1e-4)
    # blurred uniform noise: std 1 / sqrt(3) / (2 sqrt(pi) sigma) normalised units, about 2.6 px at 256
    big = synthetic_flow(4, (256, 256), generator, kernel=101, sigma=16.0, translate=0.0, device=torch.device("cpu"))
    assert float(big.std()) == pytest.approx(256 / math.sqrt(3) / (2 * math.sqrt(math.pi) * 16), rel=0.35)


def test_training_step_keeps_the_discriminator_frozen_and_epoch_end_recopies_it():
    torch.manual_seed(0)
    net = tiny_net()
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    frozen = {k: v.clone() for k, v in net.discriminator.state_dict().items()}
    loss, parts = bsafusion_loss(net.run(a, b, discriminate=True), a, b, b, net.ssim_balance)
    loss.backward()
    assert all(p.grad is None for p in net.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.transfer.parameters())
    assert set(parts) == {"cls", "transfer", "flow", "fusion", "reg", "ssim_fixed", "ssim_moving"}
    assert all(torch.equal(frozen[k], v) for k, v in net.discriminator.state_dict().items())
    net.end_epoch(0.5, 0.75)
    assert float(net.ssim_balance) == pytest.approx(1.5)
    assert "ssim_balance" in net.state_dict()  # checkpointed with the module, so a resumed run keeps it
    for k, v in net.classifier.state_dict().items():
        assert torch.equal(net.discriminator.state_dict()[k], v)


def test_losses_are_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    net = tiny_net()
    a, b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net.run(a, b, discriminate=True)
        loss, _ = bsafusion_loss(out, a, b, b, net.ssim_balance)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert out.flow.dtype == torch.float32  # the integrated field is never rounded to bfloat16
