"""Fusion quality metrics EN, SD, MI, PSNR, SF, Qabf and SSIM of a fused image F from sources A and B.

Published fusion numbers come from a few reference codes that disagree on details (log base, SF
normalisation, PSNR peak, SSIM window, ...), so every metric is computed under a named
:class:`Convention` (docs/metrics.md has the formulas):

* ``fuse4seg`` (default): EN in bits; SD with ddof 0; SF from the means of the squared first
  differences over the valid pixels; MI in nats, MI(A,F) + MI(B,F) from 256x256 joint histograms;
  PSNR with peak 255 on (MSE(A,F) + MSE(B,F)) / 2; Qabf as the reference codes have it (where
  gA == gF the strength ratio is gF, not 1); SSIM the mean of Wang et al.'s SSIM(A,F) and SSIM(B,F)
  (11x11 Gaussian window, sigma 1.5, L = 255, population covariance, mean over the valid region).
* ``cddfuse``: MMIF-CDDFuse ``utils/Evaluator.py`` on float32 images with scikit-image 0.19.2:
  PSNR peak max(F); SSIM the sum of two SSIMs with a 7x7 uniform window, sample covariance and
  data_range 2.
* ``vifb``: the VIFB MATLAB metrics: SF sums divided by H*W; PSNR on VIFB's "MSE"
  sqrt(sum d^2) / (H*W); SSIM the sum of the two SSIMs; MI on min-max stretched images.

Variants are ``dataclasses.replace(CONVENTIONS["fuse4seg"], name=..., ...)`` objects, accepted
wherever a name is: ``mi_unit="bits"``, ``qabf_equal="one"`` (textbook Qabf), ``ssim_reduce="sum"``.

Inputs are 2-D gray images of one shape on the 0..255 gray scale:

* uint8, or another integer dtype with values in 0..255, is taken as is;
* floats must be finite and >= 0. An image whose maximum is <= 1 is read as [0, 1] and multiplied
  by 255; otherwise it must lie within [0, 255] and is taken as is. (A float image on the 0..255
  scale that is almost black, max <= 1, is thus read as [0, 1]: pass uint8 to avoid that.)
* EN and MI count gray levels: float values are rounded to the nearest level first.
* Colour images are scored on their luminance: convert them with :func:`to_gray_y` (ITU-R BT.601
  Y, as PIL's "YCbCr" mode); :func:`score_folder` does so when it reads files.

Anything else raises ``ValueError`` naming the image and the problem (ndim, dtype, NaN/inf, range,
shape mismatch, image smaller than the SSIM window).

Degenerate cases, without warnings: EN, SD, SF and MI of constant images are 0; PSNR is ``inf``
when the MSE is 0 (F equals both sources) and, under ``cddfuse``, ``-inf`` when F is black but the
sources are not (its peak max(F) is 0); Qabf is NaN when neither source has any gradient, e.g. both
black (the references divide 0 by 0; with zero padding, a constant non-zero image has edges along its
border); SSIM is finite for constant images (C1, C2 > 0), and SSIM(A, A) = 1 for any A.

Qabf is computed in float64 under every convention (CDDFuse's float32 rounding moves it by < 1e-7).
Speed: the Gaussian windows run as banded matrix products (BLAS), F's histogram and local statistics
are shared between the A-F and B-F terms, Qabf only visits pixels with a source gradient, and work
arrays are kept per thread for the last image shape (a few tens of MB for 256 x 256).
"""

from __future__ import annotations

import math
import threading
import typing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

METRICS = ("EN", "SD", "MI", "PSNR", "SF", "Qabf", "SSIM")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_LN2 = math.log(2.0)


@dataclass(frozen=True)
class Convention:
    """One way of computing the seven metrics; each field is a choice on which the references differ."""

    name: str
    mi_unit: Literal["nats", "bits"] = "nats"
    mi_stretch: bool = False  # VIFB stretches each image min-max to 0..255 before binning
    sf_divisor: Literal["valid", "pixels"] = "valid"  # RF^2 / (H(W-1)), CF^2 / ((H-1)W); or both / (HW)
    psnr_peak: Literal["255", "max_fused"] = "255"
    psnr_mse: Literal["mean", "vifb"] = "mean"  # vifb: sqrt(sum of squared differences) / (H*W)
    qabf_equal: Literal["fused", "one"] = "fused"  # strength ratio where gA == gF: gF (references) or 1
    ssim_window: Literal["gaussian11", "uniform7"] = "gaussian11"
    ssim_covariance: Literal["population", "sample"] = "population"
    ssim_data_range: float = 255.0
    ssim_reduce: Literal["mean", "sum"] = "mean"  # how SSIM(A,F) and SSIM(B,F) are combined
    float32: bool = False  # compute on float32 arrays, as CDDFuse does (reproduces its rounding)

    def __post_init__(self) -> None:
        for field, hint in typing.get_type_hints(type(self)).items():
            if typing.get_origin(hint) is Literal and getattr(self, field) not in typing.get_args(hint):
                raise ValueError(f"convention {self.name!r}: {field}={getattr(self, field)!r}, "
                                 f"expected one of {typing.get_args(hint)}")
        if not self.ssim_data_range > 0:
            raise ValueError(f"convention {self.name!r}: ssim_data_range must be > 0")

    @property
    def dtype(self) -> type:
        return np.float32 if self.float32 else np.float64

    @property
    def ssim_size(self) -> int:
        return 11 if self.ssim_window == "gaussian11" else 7


CONVENTIONS: dict[str, Convention] = {
    "fuse4seg": Convention("fuse4seg"),
    "cddfuse": Convention("cddfuse", psnr_peak="max_fused", ssim_window="uniform7", ssim_covariance="sample",
                          ssim_data_range=2.0, ssim_reduce="sum", float32=True),
    "vifb": Convention("vifb", mi_stretch=True, sf_divisor="pixels", psnr_mse="vifb", ssim_reduce="sum"),
}


def get_convention(convention: str | Convention) -> Convention:
    if isinstance(convention, Convention):
        return convention
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown fusion metric convention {convention!r}; choose one of {sorted(CONVENTIONS)}")
    return CONVENTIONS[convention]


# ----------------------------------------------------------------------------------------- inputs


def _float_scale(arr: np.ndarray, name: str) -> float:
    """Check a float image; the factor that brings it to 0..255 (255 if its max is <= 1, else 1)."""
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0:
        raise ValueError(f"{name}: negative values (min {lo:g}); expected [0, 1] or [0, 255]")
    if hi > 255:
        raise ValueError(f"{name}: values above 255 (max {hi:g}); expected [0, 1] or [0, 255]")
    return 255.0 if hi <= 1 else 1.0


class _Gray:
    """A validated image: ``values`` on the 0..255 scale, its integer gray ``levels`` (made on demand)
    and whether it came as integers (then ``values`` are whole numbers)."""

    __slots__ = ("values", "_levels", "integer")

    def __init__(self, values: np.ndarray, levels: np.ndarray | None = None):
        self.values = values
        self._levels = levels
        self.integer = levels is not None

    @property
    def levels(self) -> np.ndarray:
        if self._levels is None:
            self._levels = np.rint(self.values).astype(np.uint8)
        return self._levels


def _check_size(shape: tuple[int, ...], min_size: int, what: str) -> None:
    if min(shape) < min_size:
        raise ValueError(f"{what} of shape {shape} smaller than the {min_size}x{min_size} this metric needs")


def _gray(x, name: str, conv: Convention, min_size: int = 1) -> _Gray:
    """Validate an input image; its values go to a scratch array (valid until the next call)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        colour = arr.ndim == 3 and arr.shape[-1] in (3, 4)
        hint = "; colour? score its luminance, metrics.fusion.to_gray_y(rgb)" if colour else ""
        raise ValueError(f"{name}: expected a 2-D gray image, got shape {arr.shape}{hint}")
    _check_size(arr.shape, min_size, f"{name}: image")
    values = _scratch()(f"values_{name}", arr.shape, conv.dtype)
    if np.issubdtype(arr.dtype, np.floating):
        np.multiply(arr, _float_scale(arr, name), out=values, casting="same_kind")
        return _Gray(values)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: unsupported dtype {arr.dtype}; use uint8 or a float dtype")
    if arr.dtype != np.uint8:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer gray levels must lie in 0..255, got {lo}..{hi}")
        arr = arr.astype(np.uint8)
    np.copyto(values, arr)
    return _Gray(values, arr)


def _triple(a, b, f, conv: Convention, min_size: int = 1) -> tuple[_Gray, _Gray, _Gray]:
    """Validate A, B, F: each image first, then that their shapes agree, then their size."""
    images = (_gray(a, "A", conv), _gray(b, "B", conv), _gray(f, "F", conv))
    shapes = [g.values.shape for g in images]
    if len(set(shapes)) != 1:
        raise ValueError(f"shape mismatch: A {shapes[0]}, B {shapes[1]}, F {shapes[2]}")
    _check_size(shapes[0], min_size, "images")
    return images


def to_gray_y(rgb) -> np.ndarray:
    """Luminance Y (ITU-R BT.601) of an (H, W, 3|4) image, the channel colour fusion is scored on.

    uint8 goes through PIL's "YCbCr" conversion (bit-exact with the fusion codes that use PIL) and
    gives uint8; float RGB ([0, 1] or [0, 255], as for gray images) gives float64
    0.299 R + 0.587 G + 0.114 B on the 0..255 scale. Alpha is ignored.
    """
    from PIL import Image

    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"to_gray_y: expected an (H, W, 3) or (H, W, 4) colour image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr), "RGB").convert("YCbCr"))[..., 0].copy()
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"to_gray_y: unsupported dtype {arr.dtype}; use uint8 or a float dtype")
    return (arr * _float_scale(arr, "to_gray_y")) @ np.array([0.299, 0.587, 0.114])


# ------------------------------------------------------------------------------------ the metrics


class _Scratch(dict):
    """Work arrays by name, reused by later calls in the same thread while the shape stays the same.

    Page faults on fresh megabyte arrays cost more than the arithmetic done on them, and
    score_stack / score_folder score many images of one size; only the latest shape is kept.
    """

    def __call__(self, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        buf = self.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self[name] = np.zeros(shape, dtype)
        return buf


_THREAD = threading.local()


def _scratch() -> _Scratch:
    if not hasattr(_THREAD, "scratch"):
        _THREAD.scratch = _Scratch()
    return _THREAD.scratch


@lru_cache(maxsize=8)
def _clogc(n: int) -> np.ndarray:
    """c * log(c) for every count c in 0..n (0 for c = 0), so that entropies need no log per bin."""
    c = np.arange(n + 1, dtype=np.float64)
    c[0] = 1.0
    out = c * np.log(c)
    out.flags.writeable = False
    return out


def _entropy_nats(counts: np.ndarray, n: int) -> float:
    """Shannon entropy of a histogram of n samples: log n - sum(c log c) / n (exactly 0 for one bin)."""
    if np.count_nonzero(counts) <= 1:
        return 0.0
    return math.log(n) - float(_clogc(n).take(counts).sum()) / n


def _sumsq_diff(x: np.ndarray, y: np.ndarray, name: str) -> float:
    d = _scratch()(name, x.shape, x.dtype)
    np.subtract(x, y, out=d)
    d = d.ravel()
    return float(np.dot(d, d))


def _sd(f: _Gray) -> float:
    return float(np.std(f.values))


def _sf(f: np.ndarray, conv: Convention) -> float:
    h, w = f.shape
    rows = _sumsq_diff(f[:, 1:], f[:, :-1], "sf_rows")
    cols = _sumsq_diff(f[1:], f[:-1], "sf_cols")
    if conv.sf_divisor == "valid":
        return math.sqrt(rows / (h * (w - 1)) + cols / ((h - 1) * w))
    return math.sqrt((rows + cols) / (h * w))


def _mi_levels(g: _Gray, conv: Convention) -> np.ndarray:
    """Gray levels binned for MI; VIFB first stretches the image min-max to 0..255 (MATLAB rounding)."""
    if not conv.mi_stretch:
        return g.levels
    v = g.values.astype(np.float64)
    lo, hi = v.min(), v.max()
    if hi == lo:
        return np.zeros(v.shape, np.uint8)
    x = (v - lo) / (hi - lo) * 255.0
    r = np.floor(x)
    r += (x - r) >= 0.5  # int16() rounds half away from zero
    return r.astype(np.uint8)


def _mi(a: _Gray, b: _Gray, f: _Gray, conv: Convention, hist_f: np.ndarray | None = None) -> float:
    """MI(A,F) + MI(B,F), each H(S) + H(F) - H(S,F), from bincount histograms of the gray levels."""
    lf = _mi_levels(f, conv).ravel()
    n = lf.size
    if hist_f is None or conv.mi_stretch:
        hist_f = np.bincount(lf, minlength=256)
    h_f = _entropy_nats(hist_f, n)
    scratch = _scratch()
    f_codes, codes = scratch("mi_f", (n,), np.intp), scratch("mi_joint", (n,), np.intp)
    np.copyto(f_codes, lf)
    total = 0.0
    for s in (a, b):
        ls = _mi_levels(s, conv).ravel()
        np.left_shift(ls, 8, out=codes, dtype=np.intp)
        codes |= f_codes  # joint bin: 256 * level(S) + level(F)
        total += _entropy_nats(np.bincount(ls, minlength=256), n) + h_f - _entropy_nats(np.bincount(codes), n)
    return total / _LN2 if conv.mi_unit == "bits" else total


def _psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray, conv: Convention) -> float:
    n = f.size
    sa, sb = _sumsq_diff(a, f, "psnr"), _sumsq_diff(b, f, "psnr")
    mse = (sa + sb) / (2 * n) if conv.psnr_mse == "mean" else (math.sqrt(sa) + math.sqrt(sb)) / (2 * n)
    peak = 255.0 if conv.psnr_peak == "255" else float(f.max())
    if mse == 0:
        return math.inf
    if peak == 0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / mse)


# Xydeas-Petrovic constants, as in every reference Qabf code.
_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8


def _gradients(a: np.ndarray, b: np.ndarray, f: np.ndarray, dtype: type) -> np.ndarray:
    """(3, 3, H, W): Sobel gx, gy and the squared magnitude of A, B and F, zero padded (conv2 'same').

    The kernels are separable: [1 2 1] smoothing, done as two pairwise sums, and the central
    difference. Correlating instead of convolving flips both signs, which changes neither the
    magnitude nor the orientation arctan(gy / gx). One image at a time keeps the work in cache.
    """
    h, w = f.shape
    scratch = _scratch()
    out = scratch("sobel_out", (3, 3, h, w), dtype)
    pad = scratch("sobel_pad", (h + 2, w + 2), dtype)  # the border is never written: zero padding
    pair_v, smooth_v = scratch("sobel_pair_v", (h + 1, w + 2), dtype), scratch("sobel_smooth_v", (h, w + 2), dtype)
    pair_h, smooth_h = scratch("sobel_pair_h", (h + 2, w + 1), dtype), scratch("sobel_smooth_h", (h + 2, w), dtype)
    square = scratch("sobel_square", (h, w), dtype)
    for x, gx, gy, g2 in zip((a, b, f), *out):
        pad[1:-1, 1:-1] = x
        np.add(pad[:-1], pad[1:], out=pair_v)
        np.add(pair_v[:-1], pair_v[1:], out=smooth_v)
        np.subtract(smooth_v[:, 2:], smooth_v[:, :-2], out=gx)
        np.add(pad[:, :-1], pad[:, 1:], out=pair_h)
        np.add(pair_h[:, :-1], pair_h[:, 1:], out=smooth_h)
        np.subtract(smooth_h[:-2], smooth_h[2:], out=gy)
        np.multiply(gx, gx, out=g2)
        np.multiply(gy, gy, out=square)
        g2 += square
    return out


def _directions(gx: np.ndarray, gy: np.ndarray, tmp: np.ndarray) -> None:
    """In place: (gx, gy) -> (|gx|, gy sign gx), or (0, 1) where gx == 0: a vector at the references'
    orientation arctan(gy / gx) (pi/2 where gx == 0)."""
    np.sign(gx, out=tmp)
    gy *= tmp
    np.equal(gx, 0, out=tmp)
    gy += tmp
    np.abs(gx, out=gx)


def _qabf(ga: _Gray, gb: _Gray, gf: _Gray, conv: Convention) -> float:
    """Q^{AB/F}: edge strength and orientation preservation, weighted by the source edge strengths.

    Only (source, pixel) pairs where the source has a gradient carry weight; those of A and of B are
    gathered into one set and evaluated together. The orientation difference |aS - aF| is the angle
    between two direction vectors (one arctan per pair instead of one per image and pixel), and
    Q = Tg Ta / ((1 + e^(kg (G - Dg))) (1 + e^(ka (A - Da)))).

    For images given as integers the gradients, directions and their dot and cross products are
    whole numbers below 2^24, exact in float32, which halves their memory traffic; the square roots,
    ratios, arctan and exponentials are float64 either way, so the result is the same.
    """
    exact = np.float32 if ga.integer and gb.integer and gf.integer else np.float64
    gx, gy, g2 = _gradients(ga.values, gb.values, gf.values, exact).reshape(3, 3, -1)
    n = g2.shape[1]
    src = np.flatnonzero(g2[:2] > 0)  # positions in the [A; B] rows (a bool scan is much faster)
    if src.size == 0:
        return math.nan
    fused = src.copy()
    fused[np.searchsorted(src, n):] -= n  # the same pixels in F
    scratch = _scratch()
    s2, f2, sx, sy, fx, fy, tmp = scratch("qabf_exact", (7, 2 * n), exact)[:, : src.size]
    gs, gf, t1, t2, t3 = scratch("qabf", (5, 2 * n))[:, : src.size]
    for rows, idx, dst in ((g2[:2], src, s2), (gx[:2], src, sx), (gy[:2], src, sy),
                           (g2[2], fused, f2), (gx[2], fused, fx), (gy[2], fused, fy)):
        rows.reshape(-1).take(idx, out=dst, mode="clip")  # "raise" would copy through a buffer
    np.sqrt(s2, out=gs, dtype=np.float64)
    np.sqrt(f2, out=gf, dtype=np.float64)
    _directions(sx, sy, tmp)
    _directions(fx, fy, tmp)
    np.multiply(sx, fx, out=tmp)
    np.multiply(sy, fy, out=s2)
    tmp += s2  # cos of the angle difference (times |uS| |uF|)
    np.multiply(sy, fx, out=s2)
    np.multiply(sx, fy, out=f2)
    s2 -= f2
    np.abs(s2, out=s2)  # |sin| of it (times the same)
    with np.errstate(divide="ignore"):  # cos == 0: perpendicular, arctan(inf) = pi/2
        np.divide(s2, tmp, out=t2, dtype=np.float64)
    np.arctan(t2, out=t2)
    np.less(tmp, 0, out=t1)
    t1 *= math.pi
    t2 += t1  # |aS - aF| in [0, pi)
    t2 *= -2.0 * _KA / math.pi
    t2 += _KA * (1.0 - _DA)  # ka (A - Da) with A = 1 - |aS - aF| / (pi / 2)
    np.exp(t2, out=t2)
    t2 += 1.0
    np.minimum(gs, gf, out=t1)
    t1 /= np.maximum(gs, gf, out=t3)  # strength ratio G
    if conv.qabf_equal == "fused":  # the references' quirk: G = gF where gS == gF
        np.copyto(t1, gf, where=gs == gf)
    t1 *= _KG
    t1 -= _KG * _DG
    np.exp(t1, out=t1)
    t1 += 1.0
    t1 *= t2
    np.divide(gs, t1, out=t1)
    return _TG * _TA * float(t1.sum()) / float(gs.sum())


@lru_cache(maxsize=8)
def _bands(n: int, block: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    """The valid 11-tap Gaussian correlation of length n as row blocks (start, stop, band) where band
    (stop - start, stop - start + 10) maps inputs start .. stop + 9 to outputs start .. stop - 1."""
    x = np.arange(-5, 6, dtype=np.float64)
    w = np.exp(-0.5 * (x / 1.5) ** 2)  # outer(w, w) / sum = MATLAB fspecial('gaussian', 11, 1.5)
    w /= w.sum()
    blocks = []
    for start in range(0, n - 10, block):
        m = min(block, n - 10 - start)
        band = np.zeros((m, m + 10))
        for i in range(m):
            band[i, i:i + 11] = w
        band.flags.writeable = False
        blocks.append((start, start + m, band))
    return tuple(blocks)


_ROW_BLOCK, _COL_BLOCK = 24, 16  # outputs per matrix product along W and along H (timed at 256x256)


def _gaussian_means(stack: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """11x11 Gaussian means of an (H, n, W) stack over the valid region, into out (H-10, n, W-10).

    Each 1-D pass is a few products with banded blocks (BLAS), several times faster than ndimage's
    line filters: along W on the (H*n, W) rows into rows (H, n, W-10), then along H.
    """
    h, n, w = stack.shape
    x, y = stack.reshape(h * n, w), rows.reshape(h * n, w - 10)
    for s, e, band in _bands(w, _ROW_BLOCK):
        np.matmul(x[:, s:e + 10], band.T, out=y[:, s:e])
    y, z = rows.reshape(h, n * (w - 10)), out.reshape(h - 10, n * (w - 10))
    for s, e, band in _bands(h, _COL_BLOCK):
        np.matmul(band, y[s:e + 10], out=z[s:e])


def _local_means(a: np.ndarray, b: np.ndarray, f: np.ndarray, conv: Convention) -> list[np.ndarray]:
    """Windowed means of A, B, F, A^2, B^2, F^2, AF, BF over the valid region of the SSIM window."""
    if conv.ssim_window == "uniform7":
        # scikit-image's own filter call, so that CDDFuse's float32 rounding is reproduced.
        stack = np.stack([a, b, f, a * a, b * b, f * f, a * f, b * f])
        return list(ndimage.uniform_filter(stack, size=(1, 7, 7))[:, 3:-3, 3:-3])
    h, w = f.shape
    scratch = _scratch()
    stack = scratch("ssim_stack", (h, 8, w), f.dtype)
    for k, (x, y) in enumerate(((a, None), (b, None), (f, None), (a, a), (b, b), (f, f), (a, f), (b, f))):
        if y is None:
            stack[:, k] = x
        else:
            np.multiply(x, y, out=stack[:, k])
    means = scratch("ssim_means", (h - 10, 8, w - 10), f.dtype)
    _gaussian_means(stack, scratch("ssim_rows", (h, 8, w - 10), f.dtype), means)
    return [means[:, k] for k in range(8)]


def _ssim_pair(a: np.ndarray, b: np.ndarray, f: np.ndarray, conv: Convention) -> tuple[float, float]:
    """SSIM(A,F) and SSIM(B,F), sharing F's local statistics.

    In place, but with scikit-image's floating-point operations in its order, so that float32
    rounding gives CDDFuse's numbers: S = ((2 ux uy + C1)(2 vxy + C2)) / ((ux^2 + uy^2 + C1)(vx + vy + C2)).
    """
    ua, ub, uf, uaa, ubb, uff, uaf, ubf = _local_means(a, b, f, conv)
    size = conv.ssim_size
    cov_norm = size * size / (size * size - 1.0) if conv.ssim_covariance == "sample" else 1.0
    c1 = (0.01 * conv.ssim_data_range) ** 2
    c2 = (0.03 * conv.ssim_data_range) ** 2
    uf2, vf, us2, vs, p, vsf = _scratch()("ssim_terms", (6, *uf.shape), uf.dtype)
    np.multiply(uf, uf, out=uf2)
    np.subtract(uff, uf2, out=vf)
    if cov_norm != 1.0:
        vf *= cov_norm
    out = []
    for us, uss, usf in ((ua, uaa, uaf), (ub, ubb, ubf)):
        np.multiply(us, us, out=us2)
        np.subtract(uss, us2, out=vs)
        np.multiply(us, uf, out=p)
        np.subtract(usf, p, out=vsf)
        if cov_norm != 1.0:
            vs *= cov_norm
            vsf *= cov_norm
        p *= 2  # 2 ux uy: doubling is exact, so this equals (2 ux) uy
        p += c1
        vsf *= 2
        vsf += c2
        p *= vsf
        us2 += uf2
        us2 += c1
        vs += vf
        vs += c2
        us2 *= vs
        p /= us2
        out.append(float(p.sum(dtype=np.float64)) / p.size)
    return out[0], out[1]


def _ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray, conv: Convention) -> float:
    s_af, s_bf = _ssim_pair(a, b, f, conv)
    return s_af + s_bf if conv.ssim_reduce == "sum" else (s_af + s_bf) / 2.0


# ------------------------------------------------------------------------------------- public API


def en(f, convention: str | Convention = "fuse4seg") -> float:
    """EN: entropy of F's 256-bin gray-level histogram, in bits."""
    g = _gray(f, "F", get_convention(convention))
    return _entropy_nats(np.bincount(g.levels.ravel(), minlength=256), g.levels.size) / _LN2


def sd(f, convention: str | Convention = "fuse4seg") -> float:
    """SD: population standard deviation (ddof 0) of F's gray values."""
    return _sd(_gray(f, "F", get_convention(convention)))


def sf(f, convention: str | Convention = "fuse4seg") -> float:
    """SF: sqrt(RF^2 + CF^2), the mean squared horizontal and vertical first differences of F."""
    conv = get_convention(convention)
    return _sf(_gray(f, "F", conv, min_size=2).values, conv)


def mi(a, b, f, convention: str | Convention = "fuse4seg") -> float:
    """MI: MI(A,F) + MI(B,F) from 256x256 joint gray-level histograms (nats unless the convention says bits)."""
    conv = get_convention(convention)
    return _mi(*_triple(a, b, f, conv), conv)


def psnr(a, b, f, convention: str | Convention = "fuse4seg") -> float:
    """PSNR of F against both sources: 10 log10(peak^2 / ((MSE(A,F) + MSE(B,F)) / 2)), in dB."""
    conv = get_convention(convention)
    ga, gb, gf = _triple(a, b, f, conv)
    return _psnr(ga.values, gb.values, gf.values, conv)


def qabf(a, b, f, convention: str | Convention = "fuse4seg") -> float:
    """Qabf: Xydeas-Petrovic edge preservation Q^{AB/F} in [0, 1] (NaN when no source has an edge)."""
    conv = get_convention(convention)
    return _qabf(*_triple(a, b, f, conv), conv)


def ssim(a, b, f, convention: str | Convention = "fuse4seg") -> float:
    """SSIM: SSIM(A,F) and SSIM(B,F) combined as the convention says (mean for fuse4seg)."""
    conv = get_convention(convention)
    ga, gb, gf = _triple(a, b, f, conv, min_size=conv.ssim_size)
    return _ssim(ga.values, gb.values, gf.values, conv)


def fusion_metrics(a, b, f, convention: str | Convention = "fuse4seg") -> dict[str, float]:
    """All seven metrics of one triple, in the column order ``METRICS``; F's histogram is shared."""
    conv = get_convention(convention)
    ga, gb, gf = _triple(a, b, f, conv, min_size=conv.ssim_size)
    hist_f = np.bincount(gf.levels.ravel(), minlength=256)
    return {
        "EN": _entropy_nats(hist_f, gf.levels.size) / _LN2,
        "SD": _sd(gf),
        "MI": _mi(ga, gb, gf, conv, hist_f),
        "PSNR": _psnr(ga.values, gb.values, gf.values, conv),
        "SF": _sf(gf.values, conv),
        "Qabf": _qabf(ga, gb, gf, conv),
        "SSIM": _ssim(ga.values, gb.values, gf.values, conv),
    }


def score_stack(a, b, f, convention: str | Convention = "fuse4seg", names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per image of (N, H, W) stacks: the seven metrics, preceded by ``name`` when names are given."""
    conv = get_convention(convention)
    arrays = [np.asarray(x) for x in (a, b, f)]
    for label, arr in zip("ABF", arrays):
        if arr.ndim != 3:
            raise ValueError(f"score_stack: {label} must be an (N, H, W) stack of gray images, got shape {arr.shape}")
    if len({arr.shape for arr in arrays}) != 1:
        raise ValueError(f"score_stack: shape mismatch: A {arrays[0].shape}, B {arrays[1].shape}, F {arrays[2].shape}")
    n = arrays[0].shape[0]
    if names is not None and len(names) != n:
        raise ValueError(f"score_stack: {len(names)} names for {n} images")
    rows = []
    for i in range(n):
        try:
            rows.append(fusion_metrics(arrays[0][i], arrays[1][i], arrays[2][i], conv))
        except ValueError as err:
            raise ValueError(f"image {names[i] if names is not None else i}: {err}") from None
    table = pd.DataFrame(rows, columns=list(METRICS))
    if names is not None:
        table.insert(0, "name", list(names))
    return table


def read_gray(path: str | Path) -> np.ndarray:
    """An image file as a 2-D array: gray modes as stored, colour as its luminance Y (:func:`to_gray_y`)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("1", "LA", "La"):
            im = im.convert("L")
        if im.mode in ("L", "I", "F") or im.mode.startswith("I;16"):
            return np.asarray(im)
        return to_gray_y(np.asarray(im.convert("RGB")))


def _images_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in found:
                raise ValueError(f"{folder}: two images named {path.stem!r}: {found[path.stem].name} and {path.name}")
            found[path.stem] = path
    return found


def score_folder(a_dir: str | Path, b_dir: str | Path, fused_dir: str | Path,
                 convention: str | Convention = "fuse4seg") -> pd.DataFrame:
    """Score every fused image against the sources of the same name (file stem; PNG/JPG/TIF/BMP).

    The fused folder drives: each of its images needs an A and a B image with the same stem (the
    source folders may hold more, e.g. the training pairs). Colour images are scored on Y.
    """
    conv = get_convention(convention)
    a_files, b_files, f_files = (_images_by_stem(Path(d)) for d in (a_dir, b_dir, fused_dir))
    if not f_files:
        raise ValueError(f"{fused_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    rows = []
    for stem, f_path in f_files.items():
        for files, folder in ((a_files, a_dir), (b_files, b_dir)):
            if stem not in files:
                raise FileNotFoundError(f"{f_path.name}: no source image named {stem!r} in {folder}")
        images = [read_gray(a_files[stem]), read_gray(b_files[stem]), read_gray(f_path)]
        if len({im.shape for im in images}) != 1:
            raise ValueError(f"{stem}: sizes differ: {a_files[stem]} {images[0].shape}, "
                             f"{b_files[stem]} {images[1].shape}, {f_path} {images[2].shape}")
        try:
            rows.append({"name": stem, **fusion_metrics(*images, conv)})
        except ValueError as err:
            raise ValueError(f"{stem}: {err}") from None
    return pd.DataFrame(rows, columns=["name", *METRICS])
