"""Synthetic phantoms written in the real file layouts, so tests and the default run exercise the real readers.

BraTS phantoms make the fusion task non-trivial on purpose: T1ce shows the enhancing rim (ET) bright and the
necrotic core (NCR) dark but leaves the oedema (ED) at the level of normal tissue, while FLAIR shows ED bright
and separates ET / NCR from it only weakly, so no single modality suffices. Paired phantoms give an
anatomical gray image with fine structure and a functional image with smooth blobs (pseudo-colour for
PET / SPECT, green for GFP), the contrast that fusion methods are built for. Everything is deterministic
per seed and small (a default run stays within minutes on 2 CPU cores).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from PIL import Image

from .colour import to_uint8
from .window import as_size

# tissue order: CSF, GM, WM, ED, ET, NCR; mean intensity of each per modality (relative units)
_TISSUES = ("csf", "gm", "wm", "ed", "et", "ncr")
_CONTRAST = {
    "t1":    (0.25, 0.55, 0.75, 0.45, 0.55, 0.35),
    "t1ce":  (0.25, 0.55, 0.75, 0.65, 1.00, 0.15),
    "t2":    (1.00, 0.60, 0.45, 0.85, 0.70, 0.95),
    "flair": (0.15, 0.50, 0.45, 0.95, 0.82, 0.78),
}
_SCANNER_SCALE = {"t1": 800, "t1ce": 1500, "t2": 2000, "flair": 600}  # raw units differ per sequence, as in BraTS
_PALETTES = {  # anchor colours (low -> high) of the pseudo-colour maps
    "PET": ((0, 0, 0), (0.6, 0, 0), (1, 0.4, 0), (1, 0.9, 0.2), (1, 1, 1)),
    "SPECT": ((0, 0, 0), (0, 0, 0.7), (0, 0.8, 0.9), (0.9, 0.9, 0), (1, 0.1, 0)),
}


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], max_cycles: float = 1.5, terms: int = 6) -> np.ndarray:
    """Smooth random field in [-1, 1]: a few separable cosines of at most ``max_cycles`` periods per axis."""
    axes = [np.arange(n, dtype=np.float32).reshape([-1 if d == i else 1 for d in range(len(shape))]) / n
            for i, n in enumerate(shape)]
    field = np.zeros(shape, np.float32)
    for _ in range(terms):
        term = rng.standard_normal()
        for axis in axes:
            term = term * np.cos(2 * np.pi * rng.uniform(0, max_cycles) * axis + rng.uniform(0, 2 * np.pi))
        field += term
    return field / max(float(np.abs(field).max()), 1e-6)


def _radius(shape: Sequence[int], centre: Sequence[float], axes: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoidal radius: 1 on the surface of the ellipsoid (centre, semi-axes)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    return np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes)))


def _brats_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Raw int16 modalities and labels {0, 1 NCR, 2 ED, 4 ET} of one phantom."""
    shape_arr = np.asarray(shape, np.float32)
    centre = shape_arr / 2 + rng.uniform(-0.05, 0.05, 3) * shape_arr
    axes = np.array([0.36, 0.42, 0.38]) * shape_arr * rng.uniform(0.9, 1.1, 3)
    r = _radius(shape, centre, axes) + 0.06 * _smooth_field(rng, shape)
    brain = r < 1
    tissue = np.full(shape, 1, np.int8)  # GM
    tissue[r < 0.7] = 2  # WM
    tissue[r > 0.93] = 0  # outer CSF
    for side in (-1, 1):  # ventricles
        v_centre = centre + np.array([side * 0.18 * axes[0], 0.1 * axes[1], 0])
        tissue[_radius(shape, v_centre, axes * np.array([0.12, 0.3, 0.35])) < 1] = 0

    direction = rng.standard_normal(3)
    t_centre = centre + direction / np.linalg.norm(direction) * rng.uniform(0.15, 0.4) * axes
    scale = min(shape[:2]) / 64 * rng.uniform(0.8, 1.25)
    d = _radius(shape, t_centre, [scale, scale, scale * shape[2] / shape[0] * 1.6])
    d = d + 0.7 * _smooth_field(rng, shape, max_cycles=3.0)
    r_ncr, r_et, r_ed = 3.5, 5.0, 8.5
    label = np.zeros(shape, np.uint8)
    label[(d < r_ed) & brain] = 2
    label[(d < r_et) & brain] = 4
    label[(d < r_ncr) & brain] = 1
    for value, index in ((2, 3), (4, 4), (1, 5)):
        tissue[label == value] = index

    volumes = {}
    for name, means in _CONTRAST.items():
        clean = np.asarray(means, np.float32)[tissue]
        bias = 1 + 0.12 * _smooth_field(rng, shape, max_cycles=1.0)
        noisy = clean * bias + rng.normal(0, 0.03, shape)
        raw = np.where(brain, np.maximum(np.rint(noisy * _SCANNER_SCALE[name]), 1), 0)
        volumes[name] = raw.astype(np.int16)
    return volumes, label


def write_brats_phantoms(root: Path | str, n_cases: int, seed: int = 0,
                         shape: Sequence[int] = (64, 64, 24)) -> list[Path]:
    """``n_cases`` BraTS-2018-style case folders (t1, t1ce, t2, flair int16; seg uint8, int16 in odd cases)."""
    root, shape = Path(root), tuple(int(s) for s in shape)
    affine = np.array([[-1.0, 0, 0, 0], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    folders = []
    for i in range(n_cases):
        volumes, label = _brats_case(np.random.default_rng([seed, i]), shape)
        case = f"Phantom_{i:03d}"
        folder = root / case
        folder.mkdir(parents=True, exist_ok=True)
        volumes["seg"] = label.astype(np.int16 if i % 2 else np.uint8)
        for key, data in volumes.items():
            nib.save(nib.Nifti1Image(data, affine), folder / f"{case}_{key}.nii.gz")
        folders.append(folder)
    return folders


def _pseudo_colour(values: np.ndarray, palette: Sequence[Sequence[float]]) -> np.ndarray:
    """Map [0, 1] values through piecewise-linear anchor colours to RGB in [0, 1]."""
    anchors = np.asarray(palette, np.float32)
    positions = np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(values, positions, anchors[:, c]) for c in range(3)], axis=-1)


def _head_slice(rng: np.random.Generator, size: tuple[int, int], t: float) -> tuple[np.ndarray, np.ndarray]:
    """(anatomy in [0, 1], brain mask) of an axial head slice at relative height ``t`` of a study."""
    extent = np.sqrt(max(1 - (2 * t - 1) ** 2 * 0.6, 0.1))
    centre = np.asarray(size, np.float32) / 2
    axes = np.asarray(size, np.float32) * np.array([0.42, 0.36]) * extent
    r = _radius(size, centre, axes)
    skull = (r < 1) & (r > 0.9)
    brain = r <= 0.9
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij")
    folds = 0.5 + 0.5 * np.sin(grids[0] * 0.9 + 3 * np.sin(grids[1] * 0.3 + t * 4))  # gyri-like fine texture
    anatomy = np.where(brain, 0.45 + 0.25 * folds * (r > 0.45) + 0.25 * (r <= 0.45), 0)
    anatomy[_radius(size, centre, axes * np.array([0.25, 0.12])) < 1] = 0.12  # ventricles
    anatomy[skull] = 0.9
    anatomy = anatomy + rng.normal(0, 0.02, size) * (r < 1)
    return np.clip(anatomy, 0, 1), brain


def _harvard_pair(rng: np.random.Generator, pair: str, size: tuple[int, int], t: float,
                  blobs: np.ndarray) -> tuple[Image.Image, Image.Image]:
    anatomy, brain = _head_slice(rng, size, t)
    if pair == "CT":
        r_skull = (anatomy > 0.85).astype(np.float32)
        functional = to_uint8(np.clip(r_skull + 0.25 * brain + rng.normal(0, 0.01, size), 0, 1))
        return Image.fromarray(to_uint8(anatomy)), Image.fromarray(functional)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in size], indexing="ij")
    activity = 0.25 * brain
    for bx, by, spread, gain in blobs:
        activity = activity + gain * np.exp(-((grids[0] - bx * size[0]) ** 2 + (grids[1] - by * size[1]) ** 2)
                                            / (2 * (spread * size[0]) ** 2)) * brain
    colour = _pseudo_colour(np.clip(activity, 0, 1), _PALETTES[pair])
    return Image.fromarray(to_uint8(anatomy)), Image.fromarray(to_uint8(colour))


def _cells(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(phase-contrast gray image, GFP signal) of a field of cells, both in [0, 1]."""
    phase = np.full(size, 0.55, np.float32)
    signal = np.zeros(size, np.float32)
    n_cells = int(rng.integers(6, 14))
    for _ in range(n_cells):
        centre = rng.uniform(0.1, 0.9, 2) * np.asarray(size)
        axes = rng.uniform(0.04, 0.09, 2) * min(size)
        r = _radius(size, centre, axes)
        phase[(r > 1) & (r < 1.25)] = 0.85  # bright halo of phase contrast
        phase[r <= 1] = 0.3
        if rng.random() < 0.6:
            signal = np.maximum(signal, np.clip(1.2 - r, 0, 1) * rng.uniform(0.5, 1.0))
    phase = phase + rng.normal(0, 0.03, size)
    return np.clip(phase, 0, 1), signal


def write_paired_phantoms(root: Path | str, pair: str, n_studies: int, slices_per_study: int, seed: int = 0,
                          size: int | Sequence[int] = 64) -> Path:
    """Paired phantoms in the real layouts: "PET" / "SPECT" / "CT" as Harvard (``MRI/`` + ``<pair>/``,
    ``<study><3-digit slice>.png``, studies 1..n so one-digit study ids occur as in the real copy) or "GFP"
    as GFP-PC (``PCI/<plate>-<row><col>-t.jpg`` gray stored as RGB + ``GFP/...-g.jpg`` green; one study =
    one plate row). Returns ``root``."""
    root = Path(root)
    size = as_size(size)
    if pair not in ("PET", "SPECT", "CT", "GFP"):
        raise ValueError(f"pair must be PET, SPECT, CT or GFP, got {pair!r}")
    anat_dir, func_dir = (root / "PCI", root / "GFP") if pair == "GFP" else (root / "MRI", root / pair)
    anat_dir.mkdir(parents=True, exist_ok=True)
    func_dir.mkdir(parents=True, exist_ok=True)
    for study in range(n_studies):
        rng = np.random.default_rng([seed, study])
        blobs = np.column_stack([rng.uniform(0.3, 0.7, 4), rng.uniform(0.3, 0.7, 4),
                                 rng.uniform(0.04, 0.1, 4), rng.uniform(0.3, 0.8, 4)])
        for k in range(slices_per_study):
            if pair == "GFP":
                phase, signal = _cells(rng, size)
                well = f"{2 * (1 + study // 8):02d}-{'ABCDEFGH'[study % 8]}{k + 1:02d}"
                gray = to_uint8(phase)
                green = np.stack([0.08 * signal, signal, 0.03 * signal], axis=-1)
                Image.fromarray(np.stack([gray] * 3, axis=-1)).save(anat_dir / f"{well}-t.jpg", quality=95)
                Image.fromarray(to_uint8(green)).save(func_dir / f"{well}-g.jpg", quality=95)
            else:
                anatomical, functional = _harvard_pair(rng, pair, size, (k + 1) / (slices_per_study + 1), blobs)
                name = f"{study + 1}{k + 1:03d}.png"
                anatomical.save(anat_dir / name)
                functional.save(func_dir / name)
    return root
