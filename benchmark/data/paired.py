"""Registered 2-D image pairs: Harvard AANLIB (MRI + PET / SPECT / CT) and GFP / phase contrast (GFP-PC).

Layouts (``root`` is the pair folder):

* Harvard: ``root/MRI/<name>`` with ``root/<PET|SPECT|CT>/<name>`` of the same name, ``<name>`` =
  ``<study><3-digit slice>.png``. The study id is everything before the last three digits, zero-padded to
  two (``2004.png`` is study 02 slice 004; ``20005.png`` study 20), so one-digit studies are not confused
  with two-digit ones. Neighbouring slices of a study are near duplicates, hence study = patient.
* GFP-PC: ``root/GFP/<plate>-<well>-g.jpg`` with ``root/PCI/<plate>-<well>-t.jpg``. The copy at hand holds
  only plates 02 and 04, so the plate cannot be the split unit (no test set would remain). Wells image
  independent fields, so even per-image grouping would not leak; we group by plate and well row
  (``02-A``), which also keeps fields imaged one after another along a row together.

Channels: 0 = the anatomical image (MRI; phase contrast, which is gray stored as RGB: its luminance Y,
equal to each channel when R = G = B), 1 = the luminance Y of a colour functional image (PET, SPECT, GFP)
whose Cb, Cr are kept as ``chroma`` to rebuild colour, or the gray functional image (CT) as is. Values
are the 8-bit levels / 255. Pairs whose two images differ in size are never resized: ``on_mismatch``
"skip" warns (naming both files and sizes) and drops the pair, "error" raises; the same applies to a file
without its counterpart, to a colour image in the anatomical folder (gray stored as RGB, R = G = B, is gray) and
to a gray image in a colour functional folder (PET, SPECT, GFP) or a colour one in the CT folder: each means
swapped or foreign files. ``size`` centre-crops / zero-pads every pair to a common size, only when given.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import DataError
from .colour import rgb_to_ycbcr
from .window import as_size, centre_crop_or_pad

HARVARD_FUNCTIONAL = ("PET", "SPECT", "CT")
FUNCTIONAL = HARVARD_FUNCTIONAL + ("GFP",)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
HARVARD_NAME = re.compile(r"^(\d+)(\d{3})$")
GFP_NAME = re.compile(r"^(\d+)-([A-Za-z])(\d+)$")
GRAY_MODES = {"L", "1", "LA"}
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr"}
GRAY_FUNCTIONAL = ("CT",)  # functional images stored gray; the others are pseudo-colour (PET, SPECT) or green (GFP)
GRAY_TOLERANCE = 2  # levels by which R, G, B of a gray image stored as colour may differ (JPEG rounding)
MAX_PIXELS = 8192 * 8192  # larger images are refused before decoding (a damaged header must not allocate GBs)
NEUTRAL_CHROMA = 128 / 255


@dataclass(frozen=True)
class PairedItem:
    """One registered pair: its name (file stem or GFP well id), patient (split unit) and both files."""

    name: str
    patient: str
    anatomical: Path
    functional: Path


@dataclass
class PairedData:
    """All usable pairs of a folder as arrays ready for the store."""

    modalities: tuple[str, str]
    images: np.ndarray  # float32 (N, 2, H, W)
    chroma: np.ndarray | None  # float32 (N, 2, H, W) = Cb, Cr; None when the functional side is gray
    patients: list[str]
    names: list[str]


def check_on_mismatch(on_mismatch: str) -> str:
    """``on_mismatch`` validated: "skip" (warn and drop the pair) or "error"."""
    if on_mismatch not in ("skip", "error"):
        raise ValueError(f"on_mismatch must be 'skip' or 'error', got {on_mismatch!r}")
    return on_mismatch


def _mismatch(message: str, on_mismatch: str) -> None:
    if on_mismatch == "error":
        raise DataError(message)
    warnings.warn(message + "; pair skipped", stacklevel=3)


def _images(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem (other files, e.g. Thumbs.db, are ignored)."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def find_pairs(root: Path | str, *, anatomical: str = "MRI", functional: str | None = None,
               on_mismatch: str = "skip") -> tuple[tuple[str, str], list[PairedItem]]:
    """Channel names and the sorted pairs of ``root``; ``functional`` None detects the layout.

    The GFP layout always pairs ``PCI/`` (channel "PC") with ``GFP/``; ``anatomical`` names the Harvard
    anatomical folder.
    """
    root, on_mismatch = Path(root), check_on_mismatch(on_mismatch)
    if not root.is_dir():
        raise DataError(f"{root}: paired-image folder does not exist")
    if functional is not None and functional not in FUNCTIONAL:
        raise ValueError(f"functional must be one of {FUNCTIONAL} or None, got {functional!r}")
    if functional is None:
        found = [f for f in FUNCTIONAL if (root / f).is_dir()]
        if len(found) != 1:
            raise DataError(f"{root}: expected exactly one functional sub-folder of {list(FUNCTIONAL)}, found {found}")
        functional = found[0]
    if functional == "GFP":
        return ("PC", "GFP"), _gfp_pairs(root, on_mismatch)
    return (anatomical, functional), _harvard_pairs(root, anatomical, functional, on_mismatch)


def _require(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: sub-folder missing")
    return _images(folder)


def _match(first: dict[str, Path], second: dict[str, Path], on_mismatch: str) -> list[str]:
    for key in sorted(set(first) ^ set(second)):
        path = first.get(key) or second.get(key)
        _mismatch(f"{path}: has no counterpart in the other folder of the pair", on_mismatch)
    return sorted(set(first) & set(second))


def _harvard_pairs(root: Path, anatomical: str, functional: str, on_mismatch: str) -> list[PairedItem]:
    anat, func = _require(root / anatomical), _require(root / functional)
    items = []
    for stem in _match(anat, func, on_mismatch):
        match = HARVARD_NAME.match(stem)
        if match is None:
            raise DataError(f"{anat[stem]}: name is not <study><3-digit slice> (e.g. 25010.png); cannot tell its study")
        items.append(PairedItem(stem, f"{int(match.group(1)):02d}", anat[stem], func[stem]))
    return items


def _gfp_pairs(root: Path, on_mismatch: str) -> list[PairedItem]:
    def by_id(folder: Path, suffix: str) -> dict[str, Path]:
        files = {}
        for stem, path in _require(folder).items():
            if not stem.endswith(suffix) or GFP_NAME.match(stem[: -len(suffix)]) is None:
                raise DataError(f"{path}: name is not <plate>-<well>{suffix} (e.g. 02-A05{suffix})")
            files[stem[: -len(suffix)]] = path
        return files

    pc, gfp = by_id(root / "PCI", "-t"), by_id(root / "GFP", "-g")
    items = []
    for well in _match(pc, gfp, on_mismatch):
        plate, row, _ = GFP_NAME.match(well).groups()
        items.append(PairedItem(well, f"{plate}-{row.upper()}", pc[well], gfp[well]))
    return items


def read_image(path: Path | str) -> np.ndarray:
    """uint8 (H, W) for gray files, (H, W, 3) for colour ones; DataError naming the file if it cannot be decoded."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DataError(f"{path}: {image.width}x{image.height} pixels, more than the {MAX_PIXELS:,} an image "
                                "may have here (damaged header?)")
            image.load()
            if image.mode in GRAY_MODES:
                return np.asarray(image.convert("L"))
            if image.mode in COLOUR_MODES:
                return np.asarray(image.convert("RGB"))
            mode = image.mode
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for corrupt / truncated files
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    raise DataError(f"{path}: unsupported image mode {mode} (8-bit gray or colour expected)")


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def is_gray(image: np.ndarray) -> bool:
    """A gray image: one channel, or R, G, B equal within ``GRAY_TOLERANCE`` (gray stored as colour)."""
    if image.ndim == 2:
        return True
    channels = image.astype(np.int16)
    return bool(np.abs(channels[..., 1:] - channels[..., :1]).max(initial=0) <= GRAY_TOLERANCE)


def load_pair(item: PairedItem, functional_kind: str,
              on_mismatch: str = "skip") -> tuple[np.ndarray, np.ndarray | None] | None:
    """(channels float32 (2, H, W), chroma float32 (2, H, W) or None) of a pair; None if skipped (sizes differ,
    a colour anatomical image, a functional image gray where ``functional_kind`` is a colour one or the reverse)."""
    on_mismatch = check_on_mismatch(on_mismatch)
    anatomical, functional = read_image(item.anatomical), read_image(item.functional)
    if anatomical.shape[:2] != functional.shape[:2]:
        _mismatch(f"size mismatch in pair {item.name}: {item.anatomical} is {_size(anatomical)} but "
                  f"{item.functional} is {_size(functional)} (pairs are never resized)", on_mismatch)
        return None
    if not is_gray(anatomical):
        _mismatch(f"{item.anatomical}: a colour image in the anatomical folder, which holds gray images "
                  "(files swapped?)", on_mismatch)
        return None
    if is_gray(functional) != (functional_kind in GRAY_FUNCTIONAL):
        expected = "gray" if functional_kind in GRAY_FUNCTIONAL else "colour"
        _mismatch(f"{item.functional}: a {'gray' if is_gray(functional) else 'colour'} image in the "
                  f"{functional_kind} folder, which holds {expected} images (files swapped?)", on_mismatch)
        return None
    if anatomical.ndim == 3:
        anatomical = rgb_to_ycbcr(anatomical)[..., 0]
    chroma = None
    if functional.ndim == 3:
        ycbcr = rgb_to_ycbcr(functional)
        functional, chroma = ycbcr[..., 0], np.moveaxis(ycbcr[..., 1:], -1, 0).astype(np.float32) / 255
    return np.stack([anatomical, functional]).astype(np.float32) / 255, chroma


def load_paired(root: Path | str, *, anatomical: str = "MRI", functional: str | None = None,
                size: int | Sequence[int] | None = None, on_mismatch: str = "skip") -> PairedData:
    """Every usable pair of ``root`` as arrays; colour chroma is kept when any functional image is colour
    (gray ones then get neutral chroma)."""
    modalities, items = find_pairs(root, anatomical=anatomical, functional=functional, on_mismatch=on_mismatch)
    target = None if size is None else as_size(size)
    loaded, kept = [], []
    for item in items:
        pair = load_pair(item, modalities[1], on_mismatch)
        if pair is None:
            continue
        channels, chroma = pair
        if target is not None:
            channels = centre_crop_or_pad(channels.transpose(1, 2, 0), target).transpose(2, 0, 1)
            if chroma is not None:
                chroma = centre_crop_or_pad(chroma.transpose(1, 2, 0), target, NEUTRAL_CHROMA).transpose(2, 0, 1)
        loaded.append((channels, chroma))
        kept.append(item)
    if not kept:
        raise DataError(f"{root}: no usable image pairs")
    shapes = sorted({c.shape[1:] for c, _ in loaded})
    if len(shapes) > 1:
        raise DataError(f"{root}: pairs come in several sizes {shapes}; set size=(H, W) to centre-crop/pad them")
    images = np.stack([c for c, _ in loaded])
    chroma = None
    if any(ch is not None for _, ch in loaded):
        neutral = np.full((2,) + shapes[0], NEUTRAL_CHROMA, np.float32)
        chroma = np.stack([neutral if ch is None else ch for _, ch in loaded])
    return PairedData(modalities, images, chroma, [i.patient for i in kept], [i.name for i in kept])
