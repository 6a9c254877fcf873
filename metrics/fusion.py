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

Qabf, and SSIM with the Gaussian window, are computed in float64 under every convention (CDDFuse's
float32 rounding moves Qabf by < 1e-7; only its uniform-window SSIM is reproduced in float32).
Speed: SSIM (Gaussian window), Qabf and MI run as compiled loops (Numba, metrics/_fast.py) that keep
each image row in cache; F's local statistics are shared between the A-F and B-F terms, and work
arrays are kept per thread for the last image shape.
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

from metrics import _fast

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
    """A validated image: ``values`` on the 0..255 scale and its integer gray ``levels`` (made on demand)."""

    __slots__ = ("values", "_levels")

    def __init__(self, values: np.ndarray, levels: np.ndarray | None = None):
        self.values = values
        self._levels = levels

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


def _mi(a: _Gray, b: _Gray, f: _Gray, conv: Convention) -> float:
    """MI(A,F) + MI(B,F), each H(S) + H(F) - H(S,F), from the gray-level histograms, counted in one
    compiled pass (metrics/_fast.py; np.bincount of the 65,536 joint codes took most of 1 ms)."""
    la, lb, lf = (np.ascontiguousarray(_mi_levels(g, conv)) for g in (a, b, f))
    joint = _scratch()("mi_joint", (2, 256 * 256), np.int32)
    total = _fast.mutual_information(la, lb, lf, _clogc(lf.size), joint)
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


def _qabf(ga: _Gray, gb: _Gray, gf: _Gray, conv: Convention) -> float:
    """Q^{AB/F}: edge strength and orientation preservation, weighted by the source edge strengths.

    One compiled pass (metrics/_fast.py) over the images zero padded (conv2 'same') into a float64
    work array: Qabf is float64 under every convention.
    """
    h, w = gf.values.shape
    pad = _scratch()("qabf_pad", (3, h + 2, w + 2))  # the border is never written: zero padding
    for k, g in enumerate((ga, gb, gf)):
        pad[k, 1:-1, 1:-1] = g.values
    return _fast.qabf(pad[0], pad[1], pad[2], conv.qabf_equal == "fused")


def _gaussian11() -> np.ndarray:
    """The SSIM window's 1-D taps; the kernels filter separably with them."""
    x = np.arange(-5, 6, dtype=np.float64)
    w = np.exp(-0.5 * (x / 1.5) ** 2)  # outer(w, w) / sum = MATLAB fspecial('gaussian', 11, 1.5)
    w /= w.sum()
    w.flags.writeable = False
    return w


_GAUSS11 = _gaussian11()


def _ssim_uniform7(a: np.ndarray, b: np.ndarray, f: np.ndarray, c1: float, c2: float,
                   cov_norm: float) -> tuple[float, float]:
    """SSIM(A,F) and SSIM(B,F) with the 7x7 uniform window, sharing F's local statistics.

    scikit-image's own filter call and, in place, its floating-point operations in its order, so that
    float32 rounding gives CDDFuse's numbers: S = ((2 ux uy + C1)(2 vxy + C2)) / ((ux^2 + uy^2 + C1)(vx + vy + C2)).
    """
    stack = np.stack([a, b, f, a * a, b * b, f * f, a * f, b * f])
    ua, ub, uf, uaa, ubb, uff, uaf, ubf = ndimage.uniform_filter(stack, size=(1, 7, 7))[:, 3:-3, 3:-3]
    uf2, vf, us2, vs, p, vsf = _scratch()("ssim_terms", (6, *uf.shape), uf.dtype)
    np.multiply(uf, uf, out=uf2)
    np.subtract(uff, uf2, out=vf)
    vf *= cov_norm
    out = []
    for us, uss, usf in ((ua, uaa, uaf), (ub, ubb, ubf)):
        np.multiply(us, us, out=us2)
        np.subtract(uss, us2, out=vs)
        np.multiply(us, uf, out=p)
        np.subtract(usf, p, out=vsf)
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
    """SSIM(A,F) and SSIM(B,F) combined; the Gaussian window in one compiled float64 pass (metrics/_fast.py)."""
    size = conv.ssim_size
    cov_norm = size * size / (size * size - 1.0) if conv.ssim_covariance == "sample" else 1.0
    c1 = (0.01 * conv.ssim_data_range) ** 2
    c2 = (0.03 * conv.ssim_data_range) ** 2
    if conv.ssim_window == "gaussian11":
        a, b, f = (np.asarray(x, np.float64) for x in (a, b, f))
        s_af, s_bf = _fast.ssim_gaussian11(a, b, f, _GAUSS11, c1, c2, cov_norm)
    else:
        s_af, s_bf = _ssim_uniform7(a, b, f, c1, c2, cov_norm)
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
        "MI": _mi(ga, gb, gf, conv),
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
