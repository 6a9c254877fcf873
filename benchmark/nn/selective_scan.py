"""Mamba's selective scan (S6) with ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``'s semantics.

For every channel d and state n the recurrence is

    h_t = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t,     y_t = sum_n C_t[n] * h_t[n],

with ``delta = softplus(delta + delta_bias)`` when ``delta_softplus``; the output is ``y + D * u``, gated by
``silu(z)`` when ``z`` is given, in ``u``'s dtype (the scan itself runs in float32). Shapes (as mamba_ssm):
``u, delta, z``: (batch, dim, L); ``A``: (dim, N), real; ``B, C``: (dim, N) (time-invariant), (batch, N, L)
or (batch, G, N, L) (G groups of dim // G channels share them, VMamba's four scan directions); ``D``,
``delta_bias``: (dim,).

Two paths compute it:
- ``"pure"``: PyTorch on any device, the linear recurrence solved by ``mambapy``'s parallel (Blelloch) scan in
  O(log L) sequential steps instead of L (``mambapy.pscan.pscan``, differentiable);
- ``"kernel"``: mamba_ssm's fused CUDA kernel, used by ``"auto"`` for CUDA tensors when ``mamba_ssm`` is
  installed (an optional accelerator; it needs a CUDA build and is never required).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "pure", "kernel")


@functools.lru_cache(maxsize=1)
def kernel_scan() -> Callable | None:
    """mamba_ssm's CUDA ``selective_scan_fn``, or None where mamba_ssm (or its compiled extension) is absent."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build failing at import: fall back to the pure path
        return None
    return selective_scan_fn


def _per_channel(M: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch or 1, dim, L or 1, N), broadcastable against (batch, dim, L, N)."""
    if M.dim() == 2:  # (dim, N): time-invariant
        return M[None, :, None, :]
    if M.dim() == 3:  # (batch, N, L): shared by every channel
        return M.transpose(1, 2)[:, None]
    groups = M.shape[1]  # (batch, G, N, L)
    if dim % groups:
        raise ValueError(f"selective_scan: {dim} channels cannot be split into {groups} groups of B/C")
    return M.transpose(2, 3).repeat_interleave(dim // groups, dim=1)


def _pure(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    from mambapy.pscan import pscan

    dtype = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u, delta, A = u.float(), delta.float(), A.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        dim = u.shape[1]
        decay = torch.exp(delta[..., None] * A[None, :, None, :])  # (batch, dim, L, N)
        drive = (delta * u)[..., None] * _per_channel(B.float(), dim)
        # pscan takes (batch, L, dim, N); transposed views keep the (batch, dim, L, N) memory order it works in
        h = pscan(decay.transpose(1, 2), drive.transpose(1, 2)).transpose(1, 2)
        y = (h * _per_channel(C.float(), dim)).sum(-1)
        if D is not None:
            y = y + u * D.float()[:, None]
        if z is not None:
            y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False, *,
                   backend: str = "auto") -> torch.Tensor:
    """The selective scan (module doc); ``backend``: ``auto`` (the kernel on CUDA when installed), ``pure``
    or ``kernel`` (an error where it cannot run)."""
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: backend must be one of {BACKENDS}, got {backend!r}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (VMamba-style models use real A)")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (batch, dim, L), got {tuple(u.shape)} "
                         f"and {tuple(delta.shape)}")
    kernel = kernel_scan() if u.is_cuda and backend != "pure" else None
    if backend == "kernel" and kernel is None:
        raise RuntimeError("selective_scan: backend 'kernel' needs CUDA tensors and an importable mamba_ssm")
    if kernel is None:
        return _pure(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    f32 = (lambda t: None if t is None else t.float().contiguous())
    with torch.autocast("cuda", enabled=False):
        out = kernel(f32(u), f32(delta), f32(A), f32(B), f32(C), f32(D), f32(z), f32(delta_bias), delta_softplus)
    return out.to(u.dtype)
