"""Fixed-size windows on the first two axes of an array: crop where the window lies inside, zero-pad outside.

Shared by BraTS slicing (window centred on the brain), paired centre crops and volume reassembly, so the
forward crop and its inverse use the same overlap arithmetic.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from one or two positive integers (an int means a square)."""
    size = (size, size) if np.isscalar(size) else tuple(size)
    if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
        raise ValueError(f"a size must be one or two positive integers, got {size}")
    return int(size[0]), int(size[1])


def overlap(origin: int, length: int, extent: int) -> tuple[slice, slice]:
    """Source and destination slices of a window ``[origin, origin + length)`` over an axis ``[0, extent)``."""
    lo, hi = max(origin, 0), min(origin + length, extent)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - origin, hi - origin)


def centred_origin(lo: int, hi: int, length: int) -> int:
    """Origin of a window of ``length`` centred on the index range ``[lo, hi)`` (floor when not exact)."""
    return (lo + hi - length) // 2


def crop_or_pad(array: np.ndarray, origin: tuple[int, int], size: tuple[int, int], fill: float = 0) -> np.ndarray:
    """Window of ``size`` at ``origin`` on axes 0 and 1 of ``array``; parts outside the array are ``fill``."""
    (sx, dx), (sy, dy) = overlap(origin[0], size[0], array.shape[0]), overlap(origin[1], size[1], array.shape[1])
    out = np.full((size[0], size[1]) + array.shape[2:], fill, dtype=array.dtype)
    out[dx, dy] = array[sx, sy]
    return out


def centre_crop_or_pad(array: np.ndarray, size: tuple[int, int], fill: float = 0) -> np.ndarray:
    """Window of ``size`` centred on the array's axes 0 and 1."""
    origin = (centred_origin(0, array.shape[0], size[0]), centred_origin(0, array.shape[1], size[1]))
    return crop_or_pad(array, origin, size, fill)
