"""Metric speed check: ``metrics.fusion`` against a straightforward implementation, and segmentation.

    python -m benchmark.perf.metrics_speed [--data DIR] [--pair SPECT-MRI] [--images 20] [--repeats 7]

Single-threaded (the BLAS/OpenMP thread variables are set to 1 before numpy is imported). Fusion:
real Harvard pairs (MRI and the Y channel of the colour image), F = the rounded average of the two;
prints milliseconds per triple for all seven metrics (best of ``--repeats`` passes over the images)
with ``fusion_metrics`` and with the obvious per-metric code below (NumPy, SciPy, scikit-image, one
metric at a time, as the reference evaluators do). Both are checked to agree first. Target: <= 8 ms.
Segmentation: Dice/IoU of one 155 x 240 x 240 volume with 4 classes (target < 50 ms), the slice
table of its 155 slices under every aggregation, and HD95 of the three regions.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from scipy.signal import convolve2d  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402

from metrics import segmentation  # noqa: E402
from metrics.fusion import METRICS, fusion_metrics, read_gray  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "harvard"
TARGET_FUSION_MS, TARGET_DICE_MS = 8.0, 50.0


# ------------------------------------------------ straightforward fusion metrics (the usual way)


def _entropy_bits(values: np.ndarray) -> float:
    p = np.bincount(values.astype(np.int64).ravel(), minlength=256) / values.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _mutual_information(x: np.ndarray, f: np.ndarray) -> float:
    joint, _, _ = np.histogram2d(x.ravel(), f.ravel(), bins=256, range=[[0, 256], [0, 256]])
    p = joint / joint.sum()
    px, pf = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ pf)[nz])).sum())


def _qabf_reference(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    def sobel(img):
        gx = convolve2d(img, np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float), mode="same")
        gy = convolve2d(img, np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float), mode="same")
        with np.errstate(divide="ignore", invalid="ignore"):
            angle = np.where(gx == 0, math.pi / 2, np.arctan(gy / gx))
        return np.sqrt(gx**2 + gy**2), angle

    def preservation(g_s, a_s, g_f, a_f):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(g_s > g_f, g_f / g_s, np.where(g_s == g_f, g_f, g_s / g_f))
        orient = 1 - np.abs(a_s - a_f) / (math.pi / 2)
        return 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (orient - 0.8)))

    (ga, aa), (gb, ab), (gf, af) = sobel(a), sobel(b), sobel(f)
    q_af, q_bf = preservation(ga, aa, gf, af), preservation(gb, ab, gf, af)
    return float((q_af * ga + q_bf * gb).sum() / (ga + gb).sum())


def straightforward_metrics(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> dict[str, float]:
    """The seven fuse4seg metrics one at a time, the way evaluation scripts usually write them."""
    a, b, f = (x.astype(np.float64) for x in (a, b, f))
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    ssim_kw = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    return {
        "EN": _entropy_bits(f),
        "SD": float(np.std(f)),
        "MI": _mutual_information(a, f) + _mutual_information(b, f),
        "PSNR": float(10 * np.log10(255.0**2 / mse)),
        "SF": float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2))),
        "Qabf": _qabf_reference(a, b, f),
        "SSIM": float((structural_similarity(a, f, **ssim_kw) + structural_similarity(b, f, **ssim_kw)) / 2),
    }


# ------------------------------------------------------------------------------------- timing


def best_ms(fn: Callable[[], object], repeats: int, per: int = 1) -> tuple[float, float]:
    """Best wall and best CPU (this thread) time of ``repeats`` calls, in ms per item when one call
    handles ``per`` items. On a shared machine the CPU time is the steadier of the two."""
    wall = cpu = math.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        fn()
        cpu = min(cpu, time.thread_time() - start_cpu)
        wall = min(wall, time.perf_counter() - start)
    return wall * 1e3 / per, cpu * 1e3 / per


def load_triples(folder: Path, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The first n pairs of a Harvard folder (MRI + the other modality, Y of colour), F = their average."""
    mri = folder / "MRI"
    others = [d for d in sorted(folder.iterdir()) if d.is_dir() and d.name != "MRI"] if folder.is_dir() else []
    if not mri.is_dir() or len(others) != 1:
        raise SystemExit(f"{folder}: expected an MRI/ folder and one other modality folder")
    other = others[0]
    triples = []
    for path in sorted(mri.glob("*.png"))[:n]:
        a, b = read_gray(path), read_gray(other / path.name)
        f = np.rint((a.astype(np.float64) + b) / 2).astype(np.uint8)
        triples.append((a, b, f))
    if not triples:
        raise SystemExit(f"no MRI images in {mri}")
    return triples


def fusion_speed(triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 repeats: int) -> tuple[tuple[float, float], tuple[float, float]]:
    for a, b, f in triples[:3]:
        ours, plain = fusion_metrics(a, b, f), straightforward_metrics(a, b, f)
        for m in METRICS:
            if not math.isclose(ours[m], plain[m], rel_tol=1e-9):
                raise SystemExit(f"implementations disagree on {m}: {ours[m]!r} vs {plain[m]!r}")
    n = len(triples)
    ours_ms = best_ms(lambda: [fusion_metrics(a, b, f) for a, b, f in triples], repeats, n)
    plain_ms = best_ms(lambda: [straightforward_metrics(a, b, f) for a, b, f in triples], repeats, n)
    return ours_ms, plain_ms


def brats_like_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 155 x 240 x 240 reference with nested tumour classes, and as prediction a shifted copy with
    2 % random labels around the tumour (a pessimistic case for HD95: many small surfaces)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:155, :240, :240]
    r = np.sqrt(((z - 78) / 1.2) ** 2 + (y - 120) ** 2 + (x - 110) ** 2)
    ref = np.select([r < 12, r < 22, r < 40], [1, 3, 2], 0).astype(np.uint8)
    shifted = np.roll(ref, (2, 3, -2), axis=(0, 1, 2))
    noise = (rng.random(ref.shape) < 0.02) & (r < 45)  # scattered errors around the tumour
    pred = np.where(noise, rng.integers(0, 4, ref.shape), shifted).astype(np.uint8)
    return pred, ref


def segmentation_speed(repeats: int) -> dict[str, tuple[float, float]]:
    pred, ref = brats_like_volume()
    patients = np.array(["case"] * pred.shape[0])
    slices = np.arange(pred.shape[0])
    return {
        "dice_iou_volume": best_ms(lambda: segmentation.dice_iou(pred, ref, empty_rule="nan"), repeats),
        "slices_all_aggregations": best_ms(lambda: segmentation.evaluate_slices(
            pred, ref, patients, slices, empty_rule="nan", with_hd95=False), repeats),
        "hd95_volume": best_ms(lambda: segmentation.hd95(pred, ref), max(1, repeats // 3)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf.metrics_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Harvard folder (default: %(default)s)")
    parser.add_argument("--pair", default="SPECT-MRI", help="sub-folder with MRI/ and the other modality")
    parser.add_argument("--images", type=int, default=20, help="pairs to time (default 20)")
    parser.add_argument("--repeats", type=int, default=7, help="passes; the best one counts (default 7)")
    args = parser.parse_args(argv)

    triples = load_triples(args.data / args.pair, args.images)
    shape = "x".join(map(str, triples[0][0].shape))
    ours, plain = fusion_speed(triples, args.repeats)
    print(f"fusion metrics, {len(triples)} {args.pair} triples of {shape}, single thread, "
          f"best of {args.repeats} passes (wall / CPU ms per triple):")
    print(f"  metrics.fusion.fusion_metrics   {ours[0]:7.2f} / {ours[1]:7.2f}   (target <= {TARGET_FUSION_MS:g} ms)")
    ratio = plain[1] / ours[1]
    print(f"  straightforward per metric      {plain[0]:7.2f} / {plain[1]:7.2f}   ({ratio:.1f}x the CPU time)")
    seg = segmentation_speed(args.repeats)
    print("segmentation metrics, one 155x240x240 volume, 4 classes (wall / CPU ms):")
    rows = (("dice_iou (labels + regions)", "dice_iou_volume", f"(target < {TARGET_DICE_MS:g} ms)"),
            ("evaluate_slices, 155 slices", "slices_all_aggregations", "(slice, patient and pooled; no HD95)"),
            ("hd95 (ET, TC, WT)", "hd95_volume", ""))
    for label, key, note in rows:
        print(f"  {label:30s}  {seg[key][0]:7.2f} / {seg[key][1]:7.2f}   {note}")


if __name__ == "__main__":
    main()
