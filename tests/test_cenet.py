"""CENet: BoundaryDoU loss against the official per-sample, per-class computation; differential attention and the
non-local block against naive loops; edge amplification; the PVTv2 state-dict loading; generic geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods._cenet_decoder import CCU, FEA, CENet, MultiheadDiffAttn, MultiOrderDWConv, Nonlocal
from methods._cenet_pvt import PVTv2, load_pvt_v2
from methods.cenet import Method, boundary_dou_loss

PVT_TINY = dict(dims=[16, 32, 48, 64], depths=[1, 2, 1, 1], heads=[1, 2, 2, 4], sr_ratios=[8, 4, 2, 1],
                mlp_ratios=[2, 2, 2, 2], drop_path=0.1)


def _official_boundary_dou(logits, target, n_classes):
    """CENet's utils/core.py BoundaryDoULoss, sample by sample and class by class (on CPU)."""
    probs = torch.softmax(logits, dim=1)
    kernel = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]])[None, None]
    loss = 0.0
    for i in range(n_classes):
        score, truth = probs[:, i], (target == i).float()
        y = torch.zeros_like(truth)
        for b in range(truth.shape[0]):
            y[b] = F.conv2d(truth[b][None, None], kernel, padding=1)[0, 0]
        y = y * truth
        y[y == 5] = 0
        c, s = torch.count_nonzero(y), torch.count_nonzero(truth)
        alpha = 2 * (1 - (c + 1e-5) / (s + 1e-5)) - 1
        alpha = min(alpha, 0.8)
        intersect, y_sum, z_sum = (score * truth).sum(), (truth * truth).sum(), (score * score).sum()
        loss += (z_sum + y_sum - 2 * intersect + 1e-5) / (z_sum + y_sum - (1 + alpha) * intersect + 1e-5)
    return loss / n_classes


def test_boundary_dou_loss_matches_the_official_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 50, 50, generator=g)
    target = torch.zeros(2, 50, 50, dtype=torch.long)
    target[0, 1:49, 1:49] = 1  # 188 boundary pixels of 2304: alpha = 0.84, truncated to 0.8
    target[1, 0:10, :] = 2  # touches the image border (which counts as outside)
    target[1, 20, 20] = 3  # a single pixel: all boundary, alpha = -1
    ours = boundary_dou_loss(logits, target)
    assert torch.allclose(ours, _official_boundary_dou(logits, target, 4), atol=1e-6)
    target[1, 20, 20] = 0  # an absent class: alpha = -1, its term is exactly 1
    assert torch.allclose(boundary_dou_loss(logits, target), _official_boundary_dou(logits, target, 4), atol=1e-6)


def test_differential_attention_matches_a_per_head_loop():
    torch.manual_seed(0)
    attn = MultiheadDiffAttn(dim=16, depth=3, heads=2)
    x = torch.randn(2, 10, 16)
    d = attn.head_dim
    with torch.no_grad():
        expected = _naive_diff_attention(attn, x, d)
        assert torch.allclose(attn(x), expected, atol=1e-5)


def _naive_diff_attention(attn, x, d):
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    lam = (math.exp(float(attn.lambda_q1 @ attn.lambda_k1)) - math.exp(float(attn.lambda_q2 @ attn.lambda_k2))
           + 0.8 - 0.6 * math.exp(-0.9))
    heads = []
    for h in range(2):
        a1 = torch.softmax(q[..., (2 * h) * d:(2 * h + 1) * d] @ k[..., (2 * h) * d:(2 * h + 1) * d].transpose(1, 2)
                           / math.sqrt(d), dim=-1)
        a2 = torch.softmax(q[..., (2 * h + 1) * d:(2 * h + 2) * d]
                           @ k[..., (2 * h + 1) * d:(2 * h + 2) * d].transpose(1, 2) / math.sqrt(d), dim=-1)
        o = (a1 - lam * a2) @ v[..., h * 2 * d:(h + 1) * 2 * d]
        heads.append(o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * (1 - attn.lambda_init))
    return attn.out_proj(torch.cat(heads, dim=-1))


def test_nonlocal_block_matches_its_einsum_form():
    torch.manual_seed(0)
    block = Nonlocal(8).eval()
    x = torch.randn(2, 8, 5, 6)
    theta, phi, g = (f(x).flatten(2) for f in (block.conv_theta, block.conv_phi, block.conv_g))
    affinity = torch.softmax(torch.einsum("nch,ncp->nhp", theta, phi) * 8 ** -0.5, dim=2)
    y = torch.einsum("nhg,ncg->nch", affinity, g).reshape(2, 8, 5, 6)
    expected = 0.5 * x + 0.5 * block.bn(block.conv_out(y))
    assert torch.allclose(block(x), expected, atol=1e-5)
    assert block.w.item() == 0.5


def test_edge_amplification_with_an_identity_scale():
    """Scale 1.0 resamples to itself: the edge is |x - up(down_0.5(x))|, weighted per channel."""
    torch.manual_seed(0)
    fea = FEA(4, [1.0, 0.5])
    x = torch.randn(1, 4, 8, 8)
    low = F.interpolate(x, scale_factor=0.5, mode="bilinear")
    expected = x + fea.w * (x - F.interpolate(low, size=(8, 8), mode="bilinear")).abs()
    assert torch.allclose(fea(x), expected, atol=1e-6)


def test_pvt_state_dict_loads_key_for_key_with_a_two_channel_stem():
    torch.manual_seed(0)
    rgb = PVTv2(3, **PVT_TINY)
    state = {**rgb.state_dict(), "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    ours = PVTv2(2, **PVT_TINY)
    load_pvt_v2(ours, state)
    s = ours.state_dict()
    assert torch.equal(s["block2.1.attn.kv.weight"], state["block2.1.attn.kv.weight"])
    assert torch.equal(s["block1.0.mlp.dwconv.dwconv.bias"], state["block1.0.mlp.dwconv.dwconv.bias"])
    stem = state["patch_embed1.proj.weight"]
    assert torch.allclose(s["patch_embed1.proj.weight"][:, 1], stem.sum(1) / 2)
    del state["norm4.weight"]
    with pytest.raises(ValueError, match="lack 1"):
        load_pvt_v2(ours, state)
    with pytest.raises(ValueError, match="do not fit"):
        load_pvt_v2(PVTv2(2, **{**PVT_TINY, "mlp_ratios": [4, 2, 2, 2]}), rgb.state_dict())


def test_cenet_runs_at_any_multiple_of_32_and_checks_widths():
    torch.manual_seed(0)
    net = CENet(2, 4, diffattn_heads=[2, 2, 2], scale_factors=[1.0, 0.5], **PVT_TINY).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 2, 96, 96)).shape == (2, 4, 96, 96)  # stride-32 map of 3 x 3
        with pytest.raises(ValueError, match="multiples of 32"):
            net(torch.rand(1, 2, 80, 80))
    with pytest.raises(ValueError, match="multiple of 16"):
        MultiOrderDWConv(40, [1, 2, 3])


def test_channel_gate_normalises_in_training_only():
    """As the reference's one-slice-at-a-time inference: a batch gives each slice's own prediction."""
    torch.manual_seed(0)
    ccu = CCU(6)
    x = torch.randn(4, 6, 5, 5)
    ccu(x)  # training: BatchNorm on the batch (and its running statistics move)
    ccu.bn.running_mean.add_(3.0)  # statistics far from the defaults: a norm at inference would show
    ccu.eval()
    with torch.no_grad():
        batched = ccu(x)
        single = torch.cat([ccu(x[i:i + 1]) for i in range(4)])
        flat = x.flatten(2)
        u = torch.stack([flat.amax(2), flat.mean(2), flat.std(2, unbiased=False)], dim=-1)
        expected = x * torch.sigmoid(ccu.fc2(F.relu(ccu.fc1(u))))[..., None]
    assert torch.allclose(batched, single, atol=1e-6) and torch.allclose(batched, expected, atol=1e-6)


def test_segment_maps_back_to_the_slice():
    torch.manual_seed(0)
    method = Method({**Method.test_config})
    nets = {"segmenter": method.networks()["segmenter"].eval()}
    with torch.no_grad():
        assert method.segment(nets, torch.rand(2, 2, 45, 70)).shape == (2, 4, 45, 70)


def test_method_loads_a_local_pvt_file(tmp_path):
    torch.manual_seed(0)
    rgb = PVTv2(3, **PVT_TINY)
    torch.save(rgb.state_dict(), tmp_path / "pvt_v2_b2.pth")
    net = CENet(2, 4, diffattn_heads=[2, 2, 2], scale_factors=[1.0, 0.5], **PVT_TINY)
    Method({**Method.test_config}).load_encoder(net, tmp_path / "pvt_v2_b2.pth")
    loaded, state = net.backbone.state_dict(), rgb.state_dict()
    assert torch.equal(loaded["block3.0.attn.q.weight"], state["block3.0.attn.q.weight"])
    assert torch.allclose(loaded["patch_embed1.proj.weight"][:, 0], state["patch_embed1.proj.weight"].sum(1) / 2)
