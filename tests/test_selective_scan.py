"""The shared selective scan: the pure parallel-scan path against a naive sequential loop, and the CUDA kernel
(mamba_ssm) against the pure path where both exist."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from benchmark.nn.selective_scan import kernel_scan, selective_scan


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The recurrence written out step by step (float64), B/C time-invariant, shared or grouped."""
    u, delta, A = u.double(), delta.double(), A.double()
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape

    def at(M, t):  # (batch, dim, N) at step t
        M = M.double()
        if M.dim() == 2:
            return M[None].expand(batch, -1, -1)
        if M.dim() == 3:
            return M[:, None, :, t].expand(-1, dim, -1)
        return M[:, :, :, t].repeat_interleave(dim // M.shape[1], dim=1)

    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A[None]) * h + dt * at(B, t) * u[:, :, t, None]
        ys.append((h * at(C, t)).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.double()[:, None]
    if z is not None:
        y = y * F.silu(z.double())
    return y


def _inputs(batch, dim, n, length, bc, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    shape = {"const": (dim, n), "shared": (batch, n, length), "grouped": (batch, 2, n, length)}[bc]
    args = dict(u=r(batch, dim, length), delta=r(batch, dim, length) * 0.5,
                A=-torch.exp(r(dim, n) * 0.5), B=r(*shape), C=r(*shape), D=r(dim), z=r(batch, dim, length),
                delta_bias=r(dim) * 0.1)
    return {k: v.to(device) for k, v in args.items()}


@pytest.mark.parametrize("length", [1, 2, 7, 16, 33])  # odd lengths and powers of two
@pytest.mark.parametrize("bc", ["const", "shared", "grouped"])
def test_pure_path_equals_sequential_loop(length, bc):
    args = _inputs(2, 4, 3, length, bc, seed=length)
    for softplus in (False, True):
        out = selective_scan(**args, delta_softplus=softplus, backend="pure")
        ref = naive_scan(**args, delta_softplus=softplus)
        assert out.dtype == torch.float32 and out.shape == (2, 4, length)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_optional_terms_and_gradients_match_the_loop():
    args = _inputs(1, 4, 2, 9, "grouped", seed=3)
    args.update(D=None, z=None, delta_bias=None)
    leaves = {k: v.double().requires_grad_() for k, v in args.items() if v is not None}
    out = selective_scan(**{k: v.float() for k, v in leaves.items()}, delta_softplus=True, backend="pure")
    grads = torch.autograd.grad(out.sum(), list(leaves.values()))
    ref = naive_scan(**leaves, delta_softplus=True)
    ref_grads = torch.autograd.grad(ref.sum(), list(leaves.values()))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-3, atol=1e-4)


def test_bad_arguments_are_named():
    args = _inputs(1, 4, 2, 5, "const", seed=0)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**args, backend="triton")
    with pytest.raises(ValueError, match="groups"):
        selective_scan(**{**args, "B": torch.randn(1, 3, 2, 5)})
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan(**args, backend="kernel")  # CPU tensors never take the kernel


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba_ssm (optional accelerator)")
@pytest.mark.parametrize("bc", ["shared", "grouped"])
def test_cuda_kernel_agrees_with_pure_path(bc):
    assert kernel_scan() is not None, "mamba_ssm is installed but its selective_scan_fn cannot be imported"
    args = _inputs(2, 8, 16, 257, bc, seed=5, device="cuda")
    for softplus in (False, True):
        fast = selective_scan(**args, delta_softplus=softplus, backend="kernel")
        pure = selective_scan(**args, delta_softplus=softplus, backend="pure")
        torch.testing.assert_close(fast, pure, rtol=1e-3, atol=1e-4)
