"""FusionMamba pieces the contract tests cannot see: its MS-SSIM, Sobel and LDC against hand computations, the
efficient scan's lattices, a block's size against the reference count, the output residual."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.methods import load_method
from methods._vss_blocks import _efficient_scan
from methods.fusionmamba import LDC, FusionVSSBlock, ms_ssim, sobel


def _bundled_ms_ssim(x, y):
    """The reference's formula written out: 2-D Gaussian windows, no padding, L = 1, normalised, its product."""
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    sims, css = [], []
    for _ in range(5):
        size = min(11, *x.shape[-2:])
        g = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2 * 1.5 ** 2)) for i in range(size)],
                         dtype=torch.float64)
        win = (g / g.sum())[:, None] @ (g / g.sum())[None, :]
        win = win[None, None]
        mx, my = F.conv2d(x, win), F.conv2d(y, win)
        sxx, syy = F.conv2d(x * x, win) - mx ** 2, F.conv2d(y * y, win) - my ** 2
        sxy = F.conv2d(x * y, win) - mx * my
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        css.append(((2 * sxy + c2) / (sxx + syy + c2)).mean())
        sims.append(((2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))).mean())
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    sims, css = (torch.stack(sims) + 1) / 2, (torch.stack(css) + 1) / 2
    return torch.prod(css[:-1] ** weights[:-1] * sims[-1] ** weights[-1])


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 1, 48, 40)])
def test_ms_ssim_matches_the_bundled_formula(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(*shape, generator=g)
    y = (0.6 * x + 0.4 * torch.rand(*shape, generator=g)).clamp(0, 1)
    ours = ms_ssim(x, y)
    assert float(ours) == pytest.approx(float(_bundled_ms_ssim(x.double(), y.double())), rel=1e-5)
    assert float(ms_ssim(x, x)) == pytest.approx(1.0, abs=1e-6)
    assert float(ours) < 0.99
    with pytest.raises(ValueError, match="16 pixels"):
        ms_ssim(x[..., :8, :8], y[..., :8, :8])


def test_sobel_of_a_ramp():
    ramp = torch.arange(8.0).repeat(8, 1)[None, None] * 0.5  # x slope 0.5
    g = sobel(ramp)
    assert torch.allclose(g[..., 1:-1, 1:-1], torch.full((6, 6), 4.0))  # (1 + 2 + 1) * 2 * 0.5, no y part
    assert torch.allclose(sobel(ramp.transpose(-1, -2))[..., 1:-1, 1:-1], torch.full((6, 6), 4.0))


def test_ldc_scales_the_centre_tap():
    torch.manual_seed(0)
    ldc = LDC(1)
    x = torch.rand(1, 1, 5, 5)
    w = ldc.conv.weight.detach().clone()
    with torch.no_grad():
        ldc.learnable_theta.fill_(0.0)
        assert torch.allclose(ldc(x), F.conv2d(x, w, padding=1))
        ldc.learnable_theta.fill_(0.3)
        ldc.learnable_mask.fill_(2.0)
        expected = w.clone()
        expected[0, 0, 1, 1] = w[0, 0, 1, 1] * (1 - 0.3 * 2.0 * w.sum())
        assert torch.allclose(ldc(x), F.conv2d(x, expected, padding=1), atol=1e-6)
    assert not ldc.base_mask.requires_grad


@pytest.mark.parametrize("h, w", [(6, 8), (5, 7)])
def test_efficient_scan_visits_the_four_lattices(h, w):
    x = torch.arange(2 * 3 * h * w, dtype=torch.float32).view(2, 3, h, w)
    xs, merge = _efficient_scan(x)
    padded = F.pad(x, (0, w % 2, 0, h % 2))
    assert torch.equal(xs[:, 0], padded[:, :, ::2, ::2].flatten(2))  # row-major
    assert torch.equal(xs[:, 1], padded[:, :, 1::2, ::2].transpose(2, 3).flatten(2))  # column-major
    assert torch.equal(xs[:, 2], padded[:, :, ::2, 1::2].flatten(2))
    assert torch.equal(xs[:, 3], padded[:, :, 1::2, 1::2].transpose(2, 3).flatten(2))
    assert torch.equal(merge(xs), x)  # every pixel written back by its own lattice's scan


def test_a_384_block_has_the_reference_size():
    """The reference's default and tiny counts differ by 16 blocks of 384 channels: 83,485,504 / 16."""
    block = FusionVSSBlock(384, d_state=16, drop_path=0.0)
    assert sum(p.numel() for p in block.parameters()) == (225_419_541 - 141_934_037) // 16


def test_output_is_decoder_plus_twice_each_source_and_fuse_is_min_max():
    method = load_method("fusionmamba", load_method("fusionmamba").test_config)
    torch.manual_seed(0)
    net = method.build().eval()
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 1, 21, 30, generator=g) * 0.2, torch.rand(2, 1, 21, 30, generator=g) * 0.2
    with torch.no_grad():
        net.final_conv.weight.zero_()
        net.final_conv.bias.zero_()
        assert torch.allclose(net(a, b), 2 * a + 2 * b)
        fused = method.fuse({"fusion": net}, a, b)
    low, high = fused.amin(dim=(1, 2, 3)), fused.amax(dim=(1, 2, 3))
    assert torch.allclose(low, torch.zeros(2)) and torch.allclose(high, torch.ones(2))
