"""DDFM: the respaced DDIM grid, the re-injection of an edited x0 against diffusers, the luminance round trip
against skimage, the EM step's transfer functions and bounds, and a whole fusion's independence of the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from skimage.color import rgb2ycbcr, ycbcr2rgb

from benchmark.methods import find_method, load_method
from methods._ddfm_sampler import (EMState, ddim_step, difference_otfs, em_step, from_luma, respaced_timesteps,
                                   to_luma)


def test_respacing_is_guided_diffusions():
    grid = respaced_timesteps(1000, 100)
    assert len(grid) == 100 and grid[0] == 0 and grid[-1] == 999
    assert grid[1] == 10 and grid[50] == 505 and grid[98] == 989  # round(50 * 999 / 99) = round(504.55)
    assert all(b > a for a, b in zip(grid, grid[1:]))
    # diffusers' DDIMScheduler.step would go from t to t - 10: not the previous point of this uneven grid
    assert any(t - 10 != prev for prev, t in zip(grid, grid[1:]))


def test_schedule_is_ddfms_linear_schedule():
    method = load_method("ddfm", find_method("ddfm").test_config)
    betas = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(method._schedule().alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=1e-5)


def test_edited_x0_reinjection_matches_diffusers_two_schedulers():
    """baselines.md: DDIMScheduler.step gives x0, and an edited x0 is re-injected by a second scheduler with
    prediction_type="sample" stepped at the same t. On an evenly strided grid that equals our DDIM update."""
    kwargs = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  set_alpha_to_one=True, timestep_spacing="leading")
    prior_steps, reinject = DDIMScheduler(**kwargs), DDIMScheduler(prediction_type="sample", clip_sample=False,
                                                                     **kwargs)
    prior_steps.set_timesteps(10)
    reinject.set_timesteps(10)
    abar = prior_steps.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    for t in prior_steps.timesteps.tolist():
        x0 = prior_steps.step(eps, t, x).pred_original_sample
        ours = ((x - (1 - abar[t]) ** 0.5 * eps) / abar[t] ** 0.5).clamp(-1, 1)
        assert torch.allclose(x0, ours.float(), atol=1e-5)
        edited = 0.5 * x0 + 0.1  # any edit
        expected = reinject.step(edited, t, x).prev_sample
        prev = float(abar[t - 100]) if t >= 100 else 1.0
        assert torch.allclose(ddim_step(x, edited, float(abar[t]), prev), expected, atol=1e-5)
        x = expected


def test_luma_round_trip_is_skimages_on_grey_images():
    g = torch.linspace(-1, 1, 7)
    rgb = g.numpy().astype(np.float64)[:, None].repeat(3, axis=1)[None]  # (1, 7, 3), R = G = B
    assert np.allclose(to_luma(g).numpy(), rgb2ycbcr(rgb)[0, :, 0] / 255, atol=1e-6)
    ycbcr = rgb2ycbcr(rgb)
    ycbcr[..., 0] = 255 * 0.3  # DDFM replaces Y by its EM result, here 0.3
    assert np.allclose(ycbcr2rgb(ycbcr)[0], from_luma(torch.tensor(0.3)).item(), atol=1e-6)


def test_transfer_functions_are_circular_forward_differences():
    x = torch.randn(1, 1, 5, 6, generator=torch.Generator().manual_seed(1))
    k1, k2 = difference_otfs(5, 6, x.device)
    by_fft = [torch.fft.ifft2(k * torch.fft.fft2(x)).real for k in (k1, k2)]
    assert torch.allclose(by_fft[0], torch.roll(x, -1, dims=-1) - x, atol=1e-5)
    assert torch.allclose(by_fft[1], torch.roll(x, -1, dims=-2) - x, atol=1e-5)


def test_em_step_keeps_equal_sources_and_stays_between_v_and_its_bound():
    g = torch.Generator().manual_seed(2)
    i, v, f = (torch.rand(3, 1, 8, 8, generator=g) * 2 - 1 for _ in range(3))
    otfs = difference_otfs(8, 8, i.device)
    same, _ = em_step(f, i, i, EMState.initial(i), otfs, 0.5, 0.0)  # Y = I - V = 0 and no TV pull: F = I
    assert torch.allclose(same, i, atol=1e-6)
    # D <= 2C puts the fused pixel between V and (2 I + V) / 3, up to the small rho terms
    fused, state = em_step(f, i, v, EMState.initial(i), otfs, 0.5, 0.001)
    low, high = torch.minimum(v, (2 * i + v) / 3), torch.maximum(v, (2 * i + v) / 3)
    assert bool(((fused >= low - 1e-3) & (fused <= high + 1e-3)).all())
    assert state.tau_a.shape == (3, 1, 1, 1) and state.f1.shape == i.shape


def test_fused_images_are_min_max_normalised_each():
    """(That a slice's result does not depend on its batch: tests/test_method_contract.py, for every method.)"""
    torch.manual_seed(0)
    method = load_method("ddfm", find_method("ddfm").test_config)
    nets = {k: n.eval() for k, n in method.networks().items()}
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 1, 9, 14, generator=g), torch.rand(3, 1, 9, 14, generator=g)
    with torch.no_grad():
        fused = method.fuse(nets, a, b)
    assert fused.shape == (3, 1, 9, 14)
    assert torch.allclose(fused.amin(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6)
    assert torch.allclose(fused.amax(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
