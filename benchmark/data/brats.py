"""BraTS cases: discovery in both file namings, validated loading, normalisation, labels and axial slicing.

Namings accepted (one case per sub-folder of the root):

* BraTS 2018-2021: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii[.gz]``, labels {0, 1 NCR, 2 ED, 4 ET};
* BraTS 2023+: ``<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii[.gz]``, labels {0, 1 NCR, 2 ED, 3 ET}.

Modalities are always named canonically (t1, t1ce, t2, flair); ``canonical_modality`` maps 2023 names to them.
Arrays keep the NIfTI axis order (X, Y, Z); axial slices are ``volume[:, :, z]``, so a slice window of size
(H, W) spans H voxels along X and W along Y.
"""
from __future__ import annotations

import io
import math
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import nibabel as nib
import numpy as np

from . import DataError
from .window import centred_origin, overlap

MODALITIES = ("t1", "t1ce", "t2", "flair")
# naming -> (separator between case id and suffix, canonical key -> file suffix); the naming keys double as
# label conventions, since each naming implies its ET label.
NAMINGS = {
    "brats2018": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "brats2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
}
LABEL_VALUES = {"brats2018": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3)}
CLASS_NAMES = ("background", "NCR", "ED", "ET")
KEEP_CHOICES = ("brain", "tumour")
AFFINE_ATOL = 1e-3  # mm; affines of one case's modalities may differ by float noise only
PERCENTILES = (0.5, 99.5)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
NIFTI1_HEADER_BYTES = 348
MAX_DEFLATE_RATIO = 1032  # deflate expands 2 bits to at most 258 bytes

Keep = Union[str, float]


def canonical_modality(name: str) -> str:
    """Canonical name (t1, t1ce, t2, flair) of a modality given in either naming, case-insensitively."""
    key = name.lower()
    for _, suffixes in NAMINGS.values():
        for canonical, suffix in suffixes.items():
            if key in (canonical, suffix) and canonical != "seg":
                return canonical
    raise ValueError(f"unknown BraTS modality {name!r}; expected one of {MODALITIES} or t1n, t1c, t2w, t2f")


def check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Canonical, distinct modality names; at least two, since fusion needs two sources."""
    names = tuple(canonical_modality(m) for m in modalities)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need two or more distinct BraTS modalities, got {list(modalities)}")
    return names


@dataclass(frozen=True)
class BratsCase:
    """One case folder and the naming its files follow."""

    case_id: str
    folder: Path
    naming: str

    def path(self, key: str) -> Path:
        """File of a canonical modality or ``seg`` (``.nii.gz`` preferred; that name when neither exists)."""
        sep, suffixes = NAMINGS[self.naming]
        stem = f"{self.case_id}{sep}{suffixes[key]}"
        candidates = [self.folder / (stem + ext) for ext in NIFTI_SUFFIXES]
        return next((p for p in candidates if p.is_file()), candidates[0])


def _naming_of(folder: Path) -> str | None:
    found = []
    for naming, (sep, suffixes) in NAMINGS.items():
        if any((folder / f"{folder.name}{sep}{s}{ext}").is_file() for s in suffixes.values() for ext in NIFTI_SUFFIXES):
            found.append(naming)
    if len(found) > 1:
        raise DataError(f"{folder}: holds files of both the 2018-2021 and the 2023+ BraTS namings")
    return found[0] if found else None


def case_at(folder: Path | str) -> BratsCase:
    """The case in ``folder`` (``<case>/<case>_<modality>.nii.gz`` or the 2023+ naming), read alone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such case folder")
    naming = _naming_of(folder)
    if naming is None:
        raise DataError(f"{folder}: not a BraTS case folder (expected {folder.name}_<modality>.nii.gz or "
                        f"{folder.name}-<modality>.nii.gz files)")
    return BratsCase(folder.name, folder, naming)


def find_cases(root: Path | str) -> list[BratsCase]:
    """Case folders under ``root`` sorted by id; sub-folders holding no BraTS file are skipped with a warning."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: BraTS root folder does not exist")
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        naming = _naming_of(folder)
        if naming is None:
            warnings.warn(f"{folder}: no BraTS files named {folder.name}_<modality>.nii.gz or "
                          f"{folder.name}-<modality>.nii.gz; folder skipped", stacklevel=2)
        else:
            cases.append(BratsCase(folder.name, folder, naming))
    if not cases:
        raise DataError(f"{root}: no BraTS cases found (expected <case>/<case>_flair.nii.gz or "
                        "<case>/<case>-t2f.nii.gz in sub-folders)")
    return cases


def _gunzip(raw: bytes) -> bytes:
    """Whole-buffer gzip decode with the output buffer sized from the gzip trailer (ISIZE).

    Without that size CPython regrows the buffer while holding the GIL: about 1.7x slower, and decoding
    threads then do not run in parallel. A damaged trailer must not size the buffer (4 GiB for a few bytes):
    the size is capped at what deflate can expand the file to, and zlib then rejects the wrong length.
    """
    expected = int.from_bytes(raw[-4:], "little")
    out = zlib.decompress(raw, zlib.MAX_WBITS | 16, max(min(expected, MAX_DEFLATE_RATIO * len(raw)), 1))
    if len(out) % 2**32 == expected:
        return out
    # several gzip members (e.g. bgzip): the trailer was the last member's and zlib stopped after the first
    parts = []
    while raw:
        stream = zlib.decompressobj(zlib.MAX_WBITS | 16)
        parts.append(stream.decompress(raw))
        if not stream.eof:
            raise ValueError("truncated gzip stream")
        raw = stream.unused_data
    return b"".join(parts)


def _check_voxel_bytes(raw: bytes) -> None:
    """ValueError unless the voxels the header declares fit in the file: nibabel would first allocate the declared
    size (gigabytes for a damaged dimension) and only then find the data short."""
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:NIFTI1_HEADER_BYTES]))
    shape = header.get_data_shape()
    needed = int(header.get_data_offset()) + math.prod(shape) * header.get_data_dtype().itemsize
    if needed > len(raw):
        raise ValueError(f"the header declares {shape} voxels of {header.get_data_dtype()}, {needed:,} bytes, "
                         f"but the file holds {len(raw):,}")


def read_nifti(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """Voxel array (stored dtype, scaling applied if any) and affine of a 3-D NIfTI-1 file, any failure -> DataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = _gunzip(raw)
        _check_voxel_bytes(raw)
        image = nib.Nifti1Image.from_bytes(raw)
        data = np.asanyarray(image.dataobj)
    except Exception as exc:  # nibabel / zlib raise many types for corrupt input; all mean the same here
        raise DataError(f"{path}: not a readable NIfTI-1 file ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return data, image.affine


@dataclass
class BratsVolume:
    """A loaded case: raw intensities (stored dtype, one (X, Y, Z) array per modality) and original labels."""

    case_id: str
    modalities: tuple[str, ...]
    images: list[np.ndarray]
    label: np.ndarray | None  # uint8 (X, Y, Z), original label values of ``convention``
    affine: np.ndarray
    convention: str
    files: dict[str, Path] = field(default_factory=dict)


def _check_label_values(label: np.ndarray, convention: str, what: str) -> None:
    """DataError unless every value of ``label`` belongs to ``convention`` (integer dtype expected)."""
    allowed = LABEL_VALUES[convention]
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    # one comparison per value of the observed range that the convention lacks (just 3 for brats2018)
    bad = [v for v in range(max(lo, 0), min(hi, 255) + 1) if v not in allowed and (label == v).any()]
    if lo < 0 or hi > 255 or bad:
        found = bad if 0 <= lo <= hi <= 255 else f"in range {lo}..{hi}"
        present = set(np.unique(label).tolist())
        fits = [c for c, values in LABEL_VALUES.items() if c != convention and present <= set(values)]
        hint = (f"if the data follow the {fits[0]} convention {set(LABEL_VALUES[fits[0]])}, set the dataset's "
                f"label_convention to {fits[0]!r} (workflow config: datasets.<name>.label_convention)" if fits
                else "no BraTS convention has them: check the segmentation file")
        raise DataError(f"{what}: unexpected label values {found}; {convention} allows {set(allowed)}; {hint}")


def _read_label(seg: np.ndarray, path: Path, convention: str) -> np.ndarray:
    """Segmentation as uint8 original values, from any integer or integer-valued float storage."""
    if seg.dtype.kind == "f":
        if not np.isfinite(seg).all() or (np.rint(seg) != seg).any():
            raise DataError(f"{path}: label volume holds non-integer or non-finite values")
        seg = seg.astype(np.int32)
    elif seg.dtype.kind not in "iub":
        raise DataError(f"{path}: label volume has unsupported dtype {seg.dtype}")
    _check_label_values(seg, convention, str(path))
    return seg.astype(np.uint8, copy=False)


def load_case(
    case: BratsCase,
    modalities: Sequence[str] = ("t1ce", "flair"),
    *,
    label_convention: str = "auto",
    with_label: bool = True,
) -> BratsVolume:
    """Read the chosen modalities (and the segmentation) of a case and validate them.

    Checks: every file present and readable, equal shapes, affines equal within ``AFFINE_ATOL``, finite
    intensities, labels within the convention ("auto" = the convention of the case's naming). Constant
    volumes are caught by ``intensity_range`` where the brain mask is known.
    """
    modalities = check_modalities(modalities)
    convention = case.naming if label_convention == "auto" else label_convention
    if convention not in LABEL_VALUES:
        raise ValueError(f"label_convention must be 'auto' or one of {list(LABEL_VALUES)}, got {label_convention!r}")
    keys = list(modalities) + (["seg"] if with_label else [])
    files = {k: case.path(k) for k in keys}
    for key, path in files.items():
        if not path.is_file():
            what = "segmentation" if key == "seg" else f"modality {key!r}"
            raise DataError(f"{path}: missing {what} of case {case.case_id}")
    arrays, ref_shape, ref_affine, ref_path = {}, None, None, None
    for key, path in files.items():
        data, affine = read_nifti(path)
        if ref_shape is None:
            ref_shape, ref_affine, ref_path = data.shape, affine, path
        elif data.shape != ref_shape:
            raise DataError(f"{path}: shape {data.shape} differs from {ref_path.name} {ref_shape}")
        elif not np.allclose(affine, ref_affine, rtol=0, atol=AFFINE_ATOL):
            raise DataError(f"{path}: affine differs from that of {ref_path.name} by more than {AFFINE_ATOL} mm")
        if key != "seg" and data.dtype.kind == "f" and not np.isfinite(data).all():
            raise DataError(f"{path}: {int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
        arrays[key] = data
    label = _read_label(arrays["seg"], files["seg"], convention) if with_label else None
    return BratsVolume(case.case_id, modalities, [arrays[m] for m in modalities], label, ref_affine, convention, files)


# -- intensities ---------------------------------------------------------------------------------------------

def brain_mask(images: Sequence[np.ndarray]) -> np.ndarray:
    """Brain = voxels nonzero in any modality (BraTS volumes are skull-stripped with an exact-zero background)."""
    mask = np.logical_or(images[0], images[1]) if len(images) > 1 else images[0] != 0
    for image in images[2:]:
        np.logical_or(mask, image, out=mask)
    return mask


def _integer_percentiles(values: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """``np.percentile(values, q)`` (linear interpolation) from a histogram: about twice as fast on int data."""
    base = int(values.min())
    cumulative = np.cumsum(np.bincount(np.subtract(values, base, dtype=np.intp)))
    rank = np.asarray(q, np.float64) / 100 * (cumulative[-1] - 1)
    below = np.floor(rank)
    lower = np.searchsorted(cumulative, below, side="right")  # value of sorted element #below
    upper = np.searchsorted(cumulative, np.minimum(below + 1, cumulative[-1] - 1), side="right")
    return base + lower + (rank - below) * (upper - lower)


def intensity_range(volume: np.ndarray, mask: np.ndarray, what: str = "volume") -> tuple[float, float]:
    """0.5 and 99.5 percentiles of the brain voxels: robust to the few hot voxels that plain min-max would keep."""
    values = volume[mask]
    if values.size == 0:
        raise DataError(f"{what}: no brain voxels")
    small_ints = values.dtype.kind in "iu" and values.dtype.itemsize <= 2
    lo, hi = _integer_percentiles(values, PERCENTILES) if small_ints else np.percentile(values, PERCENTILES)
    if not hi > lo:
        raise DataError(f"{what}: constant intensity ({lo:g}) inside the brain; cannot normalise")
    return float(lo), float(hi)


def scale_intensities(values: np.ndarray, lo: float, hi: float, mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Clip to [lo, hi], scale to [0, 1] and zero everything outside ``mask``, in float32 (in place into ``out``).

    Voxels outside the brain are 0 in every modality, which already maps to 0 when ``lo >= 0``; the mask is
    applied only otherwise (one pass saved on the usual non-negative MR intensities).
    """
    out = np.empty(values.shape, np.float32) if out is None else out
    np.subtract(values, np.float32(lo), out=out, casting="unsafe")
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    if lo < 0:
        out *= mask
    return out


def normalise_volume(volume: np.ndarray, mask: np.ndarray, what: str = "volume") -> np.ndarray:
    """Whole-volume normalisation: percentile clip inside the brain, [0, 1] scale, background 0."""
    return scale_intensities(volume, *intensity_range(volume, mask, what), mask)


# -- labels --------------------------------------------------------------------------------------------------

def to_contiguous(label: np.ndarray, convention: str = "brats2018") -> np.ndarray:
    """Original label values -> classes 0 bg, 1 NCR, 2 ED, 3 ET (uint8); other values -> DataError.

    Both conventions list NCR, ED, ET in increasing order with ET largest, so once the values are checked
    the mapping is ``min(value, 3)`` (4 -> 3 for brats2018, identity for brats2023): one cheap pass.
    """
    label = np.asarray(label)
    _check_label_values(label, convention, "labels")
    return np.minimum(label, 3).astype(np.uint8, copy=False)


def from_contiguous(classes: np.ndarray, convention: str = "brats2018") -> np.ndarray:
    """Classes 0..3 -> the label values of ``convention`` (uint8), e.g. to write predictions as BraTS files."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= len(CLASS_NAMES)):
        raise DataError(f"class values must lie in 0..{len(CLASS_NAMES) - 1}, got {classes.min()}..{classes.max()}")
    return np.asarray(LABEL_VALUES[convention], np.uint8)[classes.astype(np.intp, copy=False)]


# -- slicing -------------------------------------------------------------------------------------------------

def check_keep(keep: Keep) -> Keep:
    """``keep`` validated: "brain", "tumour", or a non-negative ratio of non-tumour to tumour slices."""
    if isinstance(keep, str):
        if keep in KEEP_CHOICES:
            return keep
    elif isinstance(keep, (int, float)) and not isinstance(keep, bool) and np.isfinite(keep) and keep >= 0:
        return float(keep)
    raise ValueError(f"keep must be one of {KEEP_CHOICES} or a ratio >= 0, got {keep!r}")


def select_slices(brain_z: np.ndarray, tumour_z: np.ndarray, keep: Keep, rng: np.random.Generator) -> np.ndarray:
    """Sorted axial indices to store.

    "brain": every slice holding brain; "tumour": every slice holding a tumour label; ratio r: every tumour
    slice plus round(r * n_tumour) brain slices without tumour, drawn by ``rng`` (all of them if fewer).
    """
    keep = check_keep(keep)
    if keep == "brain":
        return np.flatnonzero(brain_z)
    tumour = np.flatnonzero(tumour_z)
    if keep == "tumour":
        return tumour
    others = np.flatnonzero(brain_z & ~tumour_z)
    n_extra = min(len(others), int(round(keep * len(tumour))))
    return np.sort(np.concatenate([tumour, rng.choice(others, size=n_extra, replace=False)]))


def _extent(flags: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


@dataclass
class CaseSlices:
    """The stored part of a case plus the geometry needed to put predictions back into the volume."""

    case_id: str
    images: np.ndarray  # float32 (N, M, H, W) in [0, 1]
    labels: np.ndarray | None  # uint8 (N, H, W), contiguous classes
    slice_index: np.ndarray  # int32 (N,)
    shape: tuple[int, int, int]
    affine: np.ndarray
    crop: tuple[int, int]
    convention: str


def slice_case(volume: BratsVolume, slice_size: tuple[int, int], keep: Keep = "brain", seed: int = 0, *,
               cover_brain: bool = False) -> CaseSlices:
    """Normalise a loaded case and cut its kept axial slices to ``slice_size`` windows.

    Each modality is clipped to its ``PERCENTILES`` over the brain voxels, scaled to [0, 1] and zeroed outside
    the brain. The window is centred on the brain's XY bounding box (same for every slice of the case); parts
    outside the volume are zero padding; ``cover_brain`` grows it along an axis where the brain is larger, so that
    no brain voxel is left out (inference). The ratio draw uses a generator seeded by (seed, case id), so it does
    not depend on the order or process in which cases are handled.

    Speed: work happens on transposed (Z, Y, X) views, C-contiguous for NIfTI's Fortran-ordered arrays, so
    an axial slice is one memory block; percentiles read only the brain's bounding box and only the kept
    window voxels are converted to float (transposed back to (X, Y) in the same pass).
    """
    H, W = slice_size
    mask = brain_mask(volume.images)
    mz = mask.T
    brain_z = mz.reshape(len(mz), -1).any(axis=1)
    if not brain_z.any():
        raise DataError(f"case {volume.case_id}: no brain voxels (every modality is zero everywhere)")
    z0, z1 = _extent(brain_z)
    brain_yx = mz[z0:z1].any(axis=0)
    (y0, y1), (x0, x1) = _extent(brain_yx.any(axis=1)), _extent(brain_yx.any(axis=0))
    if cover_brain:
        H, W = max(H, x1 - x0), max(W, y1 - y0)
    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    ranges = [intensity_range(image.T[box], mz[box], str(volume.files.get(m, m)))
              for m, image in zip(volume.modalities, volume.images)]

    label_z = volume.label.T if volume.label is not None else np.zeros(mz.shape, np.uint8)
    tumour_z = label_z.reshape(len(label_z), -1).any(axis=1)
    rng = np.random.default_rng([seed, zlib.crc32(volume.case_id.encode())])
    z = select_slices(brain_z, tumour_z, keep, rng)

    crop = (centred_origin(x0, x1, H), centred_origin(y0, y1, W))
    (sx, dx), (sy, dy) = overlap(crop[0], H, mask.shape[0]), overlap(crop[1], W, mask.shape[1])
    if tumour_z.any():
        tumour_yx = label_z[tumour_z].any(axis=0)
        if tumour_yx[sy, sx].sum() < tumour_yx.sum():
            warnings.warn(f"case {volume.case_id}: tumour voxels lie outside the {H}x{W} window; they are not stored",
                          stacklevel=2)
    images = np.zeros((len(z), len(volume.images), H, W), np.float32)
    inside = mz[z, sy, sx].transpose(0, 2, 1) if min(lo for lo, _ in ranges) < 0 else None
    for i, (image, (lo, hi)) in enumerate(zip(volume.images, ranges)):
        scale_intensities(image.T[z, sy, sx].transpose(0, 2, 1), lo, hi, inside, out=images[:, i, dx, dy])
    labels = None
    if volume.label is not None:
        labels = np.zeros((len(z), H, W), np.uint8)
        labels[:, dx, dy] = to_contiguous(label_z[z, sy, sx], volume.convention).transpose(0, 2, 1)
    return CaseSlices(volume.case_id, images, labels, z.astype(np.int32), mask.shape, volume.affine, crop,
                      volume.convention)


def process_case(case: BratsCase, modalities: Sequence[str], slice_size: tuple[int, int], keep: Keep, seed: int,
                 label_convention: str = "auto") -> CaseSlices:
    """Load + slice one case; the unit of work of the preprocessing pool."""
    return slice_case(load_case(case, modalities, label_convention=label_convention), slice_size, keep, seed)
