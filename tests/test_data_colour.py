"""YCbCr conversions against PIL's "YCbCr" mode."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmark.data.colour import rebuild_rgb, rgb_to_ycbcr, ycbcr_to_rgb


@pytest.fixture(scope="module")
def cube() -> np.ndarray:
    """Every third level of each channel: 86^3 colours as a (rows, 86, 3) uint8 image."""
    v = np.arange(0, 256, 3)
    r, g, b = np.meshgrid(v, v, v, indexing="ij")
    return np.stack([r, g, b], axis=-1).reshape(-1, len(v), 3).astype(np.uint8)


def _pil(array: np.ndarray, src: str, dst: str) -> np.ndarray:
    return np.asarray(Image.frombytes(src, (array.shape[1], array.shape[0]), array.tobytes()).convert(dst))


def test_uint8_matches_pil_exactly(cube):
    np.testing.assert_array_equal(rgb_to_ycbcr(cube), _pil(cube, "RGB", "YCbCr"))
    np.testing.assert_array_equal(ycbcr_to_rgb(cube), _pil(cube, "YCbCr", "RGB"))


def test_float_is_bt601_within_pil_rounding(cube):
    forward = rgb_to_ycbcr(cube / 255.0) * 255
    assert np.abs(forward - _pil(cube, "RGB", "YCbCr")).max() <= 1.01
    backward = ycbcr_to_rgb(cube / 255.0) * 255
    assert np.abs(backward - _pil(cube, "YCbCr", "RGB")).max() <= 2.0
    grey = np.linspace(0, 1, 11)[:, None].repeat(3, axis=1)[None]
    np.testing.assert_allclose(rgb_to_ycbcr(grey)[0], np.stack([grey[0, :, 0], np.full(11, 0.5), np.full(11, 0.5)], 1), atol=1e-12)


def test_float_round_trip_and_dtype(cube):
    rgb = (cube / 255.0).astype(np.float32)
    ycc = rgb_to_ycbcr(rgb)
    assert ycc.dtype == np.float32 and ycc.min() >= -1e-6 and ycc.max() <= 1 + 1e-6
    np.testing.assert_allclose(ycbcr_to_rgb(ycc), rgb, atol=1e-5)


def test_batched_uint8_equals_per_image(cube):
    batch = cube[:40].reshape(4, 10, 86, 3)
    ycc = rgb_to_ycbcr(batch)
    assert ycc.shape == batch.shape
    for image, converted in zip(batch, ycc):
        np.testing.assert_array_equal(converted, _pil(image, "RGB", "YCbCr"))


def test_rebuild_rgb_from_fused_luminance(cube):
    rgb = cube[:50] / 255.0
    ycc = rgb_to_ycbcr(rgb)
    chroma = np.moveaxis(ycc[..., 1:], -1, 0)
    np.testing.assert_allclose(rebuild_rgb(ycc[..., 0], chroma), rgb, atol=1e-5)
    stacked = rebuild_rgb(np.stack([ycc[..., 0]] * 2), np.stack([chroma] * 2))
    assert stacked.shape == (2, 50, 86, 3)
    brighter = rebuild_rgb(np.clip(ycc[..., 0] + 0.1, 0, 1), chroma)
    assert brighter.mean() > rgb.mean()  # a fused Y changes brightness, the chroma keeps the hue
    with pytest.raises(ValueError):
        rebuild_rgb(ycc[..., 0], chroma[:1])
    with pytest.raises(ValueError):
        rgb_to_ycbcr(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError):
        rgb_to_ycbcr(np.zeros((4, 4, 3), np.int32))
