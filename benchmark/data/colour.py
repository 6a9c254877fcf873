"""RGB <-> YCbCr as PIL's "YCbCr" mode (ITU-R BT.601 / JPEG, full range): the convention of the fusion
literature, where a colour functional image is fused through its luminance Y and recoloured with its Cb, Cr.

uint8 arrays go through PIL itself, so they match PIL bit for bit (PIL uses 6-bit fixed-point tables).
Float arrays in [0, 1] use the exact BT.601 equations; PIL floors its fixed-point results, so on uint8 input
the two differ by at most ~1 grey level forward and ~2 levels back (checked over the RGB cube in the tests).
Arrays are channel-last (..., 3).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

KR, KB = 0.299, 0.114
KG = 1.0 - KR - KB
# Cb = (B - Y) / CB_SCALE + 1/2 and Cr = (R - Y) / CR_SCALE + 1/2 keep both in [0, 1]
CB_SCALE, CR_SCALE = 2 * (1 - KB), 2 * (1 - KR)
_FORWARD = np.array([
    [KR, KG, KB],
    [-KR / CB_SCALE, -KG / CB_SCALE, (1 - KB) / CB_SCALE],
    [(1 - KR) / CR_SCALE, -KG / CR_SCALE, -KB / CR_SCALE],
])
_INVERSE = np.linalg.inv(_FORWARD)
_OFFSET = np.array([0.0, 0.5, 0.5])


def _through_pil(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    """PIL conversion of any (..., W, 3) uint8 array: leading axes are folded into image rows."""
    rows = np.ascontiguousarray(array.reshape(-1, array.shape[-2], 3))
    image = Image.frombytes(src, (rows.shape[1], rows.shape[0]), rows.tobytes())
    return np.asarray(image.convert(dst)).reshape(array.shape)


def _check(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim < 2 or array.shape[-1] != 3:
        raise ValueError(f"expected a channel-last (..., 3) array, got shape {array.shape}")
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise ValueError(f"expected uint8 or float values in [0, 1], got dtype {array.dtype}")
    return array


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB -> YCbCr, same dtype: uint8 exactly as PIL, float in [0, 1] by the BT.601 equations."""
    rgb = _check(rgb)
    if rgb.dtype == np.uint8:
        return _through_pil(rgb, "RGB", "YCbCr")
    return (rgb @ _FORWARD.T.astype(rgb.dtype) + _OFFSET.astype(rgb.dtype)).astype(rgb.dtype, copy=False)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """YCbCr -> RGB, same dtype: uint8 exactly as PIL, float clipped to [0, 1]."""
    ycbcr = _check(ycbcr)
    if ycbcr.dtype == np.uint8:
        return _through_pil(ycbcr, "YCbCr", "RGB")
    rgb = (ycbcr - _OFFSET.astype(ycbcr.dtype)) @ _INVERSE.T.astype(ycbcr.dtype)
    return np.clip(rgb, 0.0, 1.0).astype(ycbcr.dtype, copy=False)


def rebuild_rgb(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """Colour image from a fused luminance ``y`` (..., H, W) and the functional image's ``chroma``
    (..., 2, H, W) = (Cb, Cr), all floats in [0, 1] as stored; returns float RGB (..., H, W, 3) in [0, 1]."""
    y, chroma = np.asarray(y, np.float32), np.asarray(chroma, np.float32)
    if chroma.shape[:-3] != y.shape[:-2] or chroma.shape[-3] != 2 or chroma.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"chroma of shape {chroma.shape} does not match luminance of shape {y.shape}")
    return ycbcr_to_rgb(np.stack([y, chroma[..., 0, :, :], chroma[..., 1, :, :]], axis=-1))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255 gray levels (rounded, clipped), as image files and the fusion metrics store them."""
    return np.clip(np.rint(np.asarray(values, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
