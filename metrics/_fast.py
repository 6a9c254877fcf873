"""Compiled (Numba) kernels of ``metrics.fusion``: Gaussian SSIM, Qabf and the MI histograms.

NumPy needs dozens of array passes and temporaries for these (the SSIM filters alone were ~4 ms of
BLAS per 256x256 triple, Qabf ~40 passes); fused loops keep each row in cache and do the work once.
Arithmetic is plain IEEE float64 (no fastmath, so no reassociation or FMA contraction): the results
agree with the NumPy/scikit-image formulas to ~1e-15, and equal inputs give bitwise equal terms,
e.g. SSIM(A, A) = 1 exactly. Compiled code is cached on disk (``cache=True``), so only the first
use after an install or an edit compiles (5-10 s).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_R = 11  # taps of the Gaussian SSIM window; a compile-time constant, so the tap loops unroll

# Xydeas-Petrovic constants, as in every reference Qabf code.
_TG, _KG, _DG = 0.9994, -15.0, 0.5
_TA, _KA, _DA = 0.9879, -22.0, 0.8
_ORIENT_SCALE = -2.0 * _KA / math.pi  # ka (A - Da) = _ORIENT_SCALE * |aS - aF| + _ORIENT_SHIFT
_ORIENT_SHIFT = _KA * (1.0 - _DA)
_HALF_PI = math.pi / 2

_JIT = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_JIT)
def _correlate11(src, w, dst):
    """dst[j] = sum_k w[k] src[j + k]: the valid 11-tap correlation of one row (taps in registers)."""
    for j in range(dst.size):
        acc = 0.0
        for k in range(_R):
            acc += w[k] * src[j + k]
        dst[j] = acc


@njit(**_JIT)
def ssim_gaussian11(a, b, f, w, c1, c2, cov_norm):
    """Mean SSIM(A,F) and SSIM(B,F) over the valid region of the 11x11 separable window w (x) w.

    The eight maps A, B, F, A^2, B^2, F^2, AF, BF (F's shared by both sources) are filtered along
    each input row as it comes, into a ring of the last 11 filtered rows per map, and down that ring
    for each output row, whose SSIM follows at once: the working set stays in cache. One map and one
    row per loop, so that the loops vectorise. Rows are summed, then the row sums.
    """
    h, wd = f.shape
    ho, wo = h - _R + 1, wd - _R + 1
    images = (a, b, f)
    pairs = ((a, a), (b, b), (f, f), (a, f), (b, f))
    ring = np.empty((8, _R, wo))
    product = np.empty(wd)
    m = np.empty((8, wo))  # local means of one output row
    sa = np.empty(wo)
    sb = np.empty(wo)
    total_a = 0.0
    total_b = 0.0
    for y in range(h):
        slot = y % _R
        for q in range(3):
            _correlate11(images[q][y], w, ring[q, slot])
        for q in range(5):
            s, t = pairs[q]
            for x in range(wd):
                product[x] = s[y, x] * t[y, x]
            _correlate11(product, w, ring[q + 3, slot])
        i = y - _R + 1  # the output row whose input rows i .. y, slots (i + k) % 11, are all in
        if i < 0:
            continue
        for q in range(8):
            dst = m[q]
            for j in range(wo):
                acc = 0.0
                for k in range(_R):
                    acc += w[k] * ring[q, (i + k) % _R, j]
                dst[j] = acc
        for j in range(wo):
            mf = m[2, j]
            mf2 = mf * mf
            vf = (m[5, j] - mf2) * cov_norm
            ma = m[0, j]
            ma2 = ma * ma
            va = (m[3, j] - ma2) * cov_norm
            vaf = (m[6, j] - ma * mf) * cov_norm
            sa[j] = ((2.0 * ma * mf + c1) * (2.0 * vaf + c2)) / ((ma2 + mf2 + c1) * (va + vf + c2))
            mb = m[1, j]
            mb2 = mb * mb
            vb = (m[4, j] - mb2) * cov_norm
            vbf = (m[7, j] - mb * mf) * cov_norm
            sb[j] = ((2.0 * mb * mf + c1) * (2.0 * vbf + c2)) / ((mb2 + mf2 + c1) * (vb + vf + c2))
        row_a = 0.0
        row_b = 0.0
        for j in range(wo):
            row_a += sa[j]
            row_b += sb[j]
        total_a += row_a
        total_b += row_b
    n = ho * wo
    return total_a / n, total_b / n


@njit(**_JIT)
def _sobel_row(p, y, gx, gy):
    """Sobel gx, gy of row y of the zero-padded image p (correlation; the signs do not matter)."""
    wd = gx.size
    for x in range(wd):
        top_l, top, top_r = p[y, x], p[y, x + 1], p[y, x + 2]
        mid_l, mid_r = p[y + 1, x], p[y + 1, x + 2]
        bot_l, bot, bot_r = p[y + 2, x], p[y + 2, x + 1], p[y + 2, x + 2]
        gx[x] = (top_r + 2.0 * mid_r + bot_r) - (top_l + 2.0 * mid_l + bot_l)
        gy[x] = (top_l + 2.0 * top + top_r) - (bot_l + 2.0 * bot + bot_r)


@njit(**_JIT)
def _direction(gx, gy):
    """(|gx|, gy sign gx), or (0, 1) where gx == 0: a vector at the references' orientation
    arctan(gy / gx), which is pi/2 where gx == 0."""
    if gx > 0.0:
        return gx, gy
    if gx < 0.0:
        return -gx, -gy
    return 0.0, 1.0


# exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts, fdlibm's), exp(r) by its
# Taylor polynomial to r^13 (|r| <= 0.35: truncation < 1e-17): within 1 ulp of libm's exp.
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 2^52 + 2^51: adding it rounds to an integer, held in the low bits
_E3 = 1.0 / 6
_E4 = 1.0 / 24
_E5 = 1.0 / 120
_E6 = 1.0 / 720
_E7 = 1.0 / 5040
_E8 = 1.0 / 40320
_E9 = 1.0 / 362880
_E10 = 1.0 / 3628800
_E11 = 1.0 / 39916800
_E12 = 1.0 / 479001600
_E13 = 1.0 / 6227020800


@njit(**_JIT)
def _exp_inplace(x, work):
    """x <- exp(x) for -700 < x < 700, in loops that vectorise (libm's exp is one call per value)."""
    bits = work.view(np.int64)
    for i in range(x.size):
        t = x[i] * _LOG2E + _ROUND
        n = t - _ROUND
        r = (x[i] - n * _LN2_HI) - n * _LN2_LO
        x[i] = ((((((((((((_E13 * r + _E12) * r + _E11) * r + _E10) * r + _E9) * r + _E8) * r + _E7) * r + _E6)
                     * r + _E5) * r + _E4) * r + _E3) * r + 0.5) * r + 1.0) * r + 1.0
        work[i] = t
    for i in range(x.size):
        bits[i] = (bits[i] + 1023) << 52  # 2^n: n from t's low bits into the exponent field
    for i in range(x.size):
        x[i] *= work[i]


# arctan(x) for x >= 0, Cephes' atan (S. L. Moshier): reduced by tan(3 pi / 8) and tan(pi / 4) to
# |r| <= 0.66, then r + r z P(z) / Q(z) with z = r^2: within 1 ulp of libm's atan.
_P0, _P1, _P2, _P3, _P4 = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
                           -1.228866684490136173410e2, -6.485021904942025371773e1)
_Q0, _Q1, _Q2, _Q3, _Q4 = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
                           4.853903996359136964868e2, 1.945506571482613964425e2)
_T3P8 = 2.41421356237309504880  # tan(3 pi / 8)
_MOREBITS = 6.123233995736765886130e-17  # pi / 2 - float(pi / 2)


@njit(inline="always", **_JIT)
def _atan_nonneg(x):
    """arctan(x) for 0 <= x <= inf with selects only, so that a loop calling it vectorises."""
    big = x > _T3P8
    mid = x > 0.66
    r = -1.0 / x if big else ((x - 1.0) / (x + 1.0) if mid else x)
    base = _HALF_PI if big else (_HALF_PI / 2 if mid else 0.0)
    extra = _MOREBITS if big else (0.5 * _MOREBITS if mid else 0.0)
    z = r * r
    p = (((_P0 * z + _P1) * z + _P2) * z + _P3) * z + _P4
    q = ((((z + _Q0) * z + _Q1) * z + _Q2) * z + _Q3) * z + _Q4
    return base + ((r * (z * p / q) + r) + extra)


@njit(**_JIT)
def qabf(pa, pb, pf, equal_fused):
    """Q^{AB/F} from zero-padded (H+2, W+2) images; NaN when no source has a gradient.

    Only (source, pixel) pairs with a source gradient carry weight. The orientation difference
    |aS - aF| of the references' angles is the angle between the two direction vectors: one arctan
    per pair instead of one per image and pixel. Q = Tg Ta / ((1 + e^(kg (G - Dg))) (1 + e^(ka (A - Da))));
    with ``equal_fused`` the strength ratio G is gF where gS == gF, as in the reference codes.
    Per row, branch-free loops (they vectorise) prepare the pairs and take the arctan and the
    exponentials; the weighted sum then visits the pairs with a source gradient.
    """
    h, wd = pf.shape[0] - 2, pf.shape[1] - 2
    g = np.empty((6, wd))  # Sobel gx, gy of A, B, F in one row
    mag = np.empty((2, wd))  # per source: its gradient magnitude,
    e_strength = np.empty(2 * wd)  # kg (G - Dg), then its exponential,
    e_orient = np.empty(2 * wd)  # ka (A - Da), then its exponential
    work = np.empty(2 * wd)
    num = 0.0
    den = 0.0
    for y in range(h):
        _sobel_row(pa, y, g[0], g[1])
        _sobel_row(pb, y, g[2], g[3])
        _sobel_row(pf, y, g[4], g[5])
        for s in range(2):
            for x in range(wd):
                fx, fy = g[4, x], g[5, x]
                sx, sy = g[2 * s, x], g[2 * s + 1, x]
                gf = math.sqrt(fx * fx + fy * fy)
                gs = math.sqrt(sx * sx + sy * sy)
                mag[s, x] = gs
                ratio = gf if equal_fused and gs == gf else min(gs, gf) / max(gs, gf)
                # below -40, 1 + e^x rounds to 1 anyway (G = gF can be large)
                e_strength[s * wd + x] = max(ratio * _KG - _KG * _DG, -40.0)
                fx, fy = _direction(fx, fy)
                sx, sy = _direction(sx, sy)
                cos = sx * fx + sy * fy
                acute = _atan_nonneg(abs(sy * fx - sx * fy) / abs(cos))  # cos is never -0.0
                angle = acute if cos >= 0.0 else math.pi - acute  # |aS - aF| in [0, pi)
                e_orient[s * wd + x] = angle * _ORIENT_SCALE + _ORIENT_SHIFT
        _exp_inplace(e_strength, work)
        _exp_inplace(e_orient, work)
        row_num = 0.0
        row_den = 0.0
        for x in range(wd):
            for s in range(2):
                gs = mag[s, x]
                if gs > 0.0:
                    row_num += gs / ((e_strength[s * wd + x] + 1.0) * (e_orient[s * wd + x] + 1.0))
                    row_den += gs
        num += row_num
        den += row_den
    if den == 0.0:
        return math.nan
    return _TG * _TA * num / den


@njit(**_JIT)
def _entropy(counts, clogc, n):
    """log n - sum(c log c) / n over the bins; exactly 0 with fewer than two occupied bins.

    Summed in blocks of 256 bins, then the block sums: log n - sum / n cancels most digits, and a
    plain running sum over 65,536 bins would lose ~1e-13 of the entropy.
    """
    total = 0.0
    occupied = 0
    for start in range(0, counts.size, 256):
        block = 0.0
        for c in counts[start:start + 256]:
            if c:
                block += clogc[c]
                occupied += 1
        total += block
    if occupied <= 1:
        return 0.0
    return math.log(n) - total / n


@njit(**_JIT)
def mutual_information(la, lb, lf, clogc, joint):
    """MI(A,F) + MI(B,F) in nats from gray levels (uint8, C order); joint: (2, 65536) int32 work array."""
    n = lf.size
    hist = np.zeros((3, 256), np.int32)
    joint[:] = 0
    a, b, f = la.ravel(), lb.ravel(), lf.ravel()
    for i in range(n):
        ai, bi, fi = np.int32(a[i]), np.int32(b[i]), np.int32(f[i])
        hist[0, ai] += 1
        hist[1, bi] += 1
        hist[2, fi] += 1
        joint[0, ai * 256 + fi] += 1
        joint[1, bi * 256 + fi] += 1
    h_f = _entropy(hist[2], clogc, n)
    mi_af = _entropy(hist[0], clogc, n) + h_f - _entropy(joint[0], clogc, n)
    mi_bf = _entropy(hist[1], clogc, n) + h_f - _entropy(joint[1], clogc, n)
    return mi_af + mi_bf
