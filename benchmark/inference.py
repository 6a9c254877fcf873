"""Inference with a trained run: fuse one image pair, or segment one BraTS case into a NIfTI label map.

Both read raw files through the same readers and normalisation as preprocessing, so a checkpoint sees at
inference exactly the kind of input it was trained on. A brain larger than the trained slice window is segmented
in overlapping windows of the trained size (class probabilities summed where they overlap), so every brain voxel
gets a prediction.
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from metrics.segmentation import N_CLASSES

from .atomic import write_atomic
from .data import DataError
from .data.brats import NIFTI_SUFFIXES, case_at, from_contiguous, load_case, slice_case
from .data.colour import rebuild_rgb, rgb_to_ycbcr, to_uint8
from .data.paired import read_image
from .data.store import place_slices
from .trained import TrainedRun


def _luminance(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 gray or RGB -> (Y in [0, 1], Cb/Cr (2, H, W) in [0, 1] or None), as the paired reader does."""
    if image.ndim == 2:
        return image.astype(np.float32) / 255, None
    ycbcr = rgb_to_ycbcr(image).astype(np.float32) / 255
    return ycbcr[..., 0], np.moveaxis(ycbcr[..., 1:], -1, 0)


def image_format(path: Path) -> str:
    """PIL's format name for the suffix of ``path`` (".png" -> "PNG", ".jpg" -> "JPEG", ...)."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise DataError(f"{path}: cannot tell an image format to write from the suffix {Path(path).suffix!r} "
                        "(use .png, .jpg, .tif, .bmp, ...)")
    return fmt


def fuse_files(run_dir: Path, a_path: Path, b_path: Path, out_path: Path, device: str = "auto") -> Path:
    """Fuse ``a`` (anatomical) with ``b``; if ``b`` is colour the output is rebuilt in colour from its Cb/Cr. The
    output's format follows its suffix."""
    out_path = Path(out_path)
    fmt = image_format(out_path)
    run = TrainedRun(run_dir, device)
    a_img, b_img = read_image(a_path), read_image(b_path)
    if a_img.shape[:2] != b_img.shape[:2]:
        raise DataError(f"{a_path} is {a_img.shape[1]}x{a_img.shape[0]} but {b_path} is "
                        f"{b_img.shape[1]}x{b_img.shape[0]}: a pair must be registered and of one size")
    a, _ = _luminance(a_img)
    b, chroma = _luminance(b_img)
    fused = run.fuse(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0].cpu().numpy()
    pixels = to_uint8(rebuild_rgb(fused, chroma) if chroma is not None else fused)
    options = {"quality": 95} if fmt == "JPEG" else {}
    write_atomic(out_path, lambda tmp: Image.fromarray(pixels).save(tmp, format=fmt, **options))
    return out_path


def window_origins(extent: int, window: int) -> list[int]:
    """Origins of windows of length ``window`` covering ``[0, extent)``, neighbours overlapping by half a window
    or more (one window when it covers the extent)."""
    if extent <= window:
        return [0]
    n = math.ceil((extent - window) / (window / 2)) + 1
    return sorted({round(i * (extent - window) / (n - 1)) for i in range(n)})


@torch.no_grad()
def segment_windows(run: TrainedRun, images: np.ndarray, window: tuple[int, int], batch_size: int) -> np.ndarray:
    """Classes (N, H, W) of slices (N, M, H, W) at least as large as ``window``: each window-sized tile is
    segmented as the run was trained, class probabilities summed where tiles overlap."""
    (h, w), (th, tw) = images.shape[-2:], window
    tiles = [(y, x) for y in window_origins(h, th) for x in window_origins(w, tw)]
    classes = np.empty((len(images), h, w), np.uint8)
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start:start + batch_size])
        total = torch.zeros(len(batch), N_CLASSES, h, w)
        for y, x in tiles:
            total[..., y:y + th, x:x + tw] += run.segment(batch[..., y:y + th, x:x + tw]).softmax(1).cpu()
        classes[start:start + len(batch)] = total.argmax(1).numpy()
    return classes


def segment_case(run_dir: Path, case_dir: Path, out_path: Path, device: str = "auto", batch_size: int = 16) -> Path:
    """Segment every brain slice of a BraTS case; write labels in its geometry and label convention."""
    out_path = Path(out_path)
    if not out_path.name.endswith(NIFTI_SUFFIXES):
        raise DataError(f"{out_path}: a label map is written as NIfTI; name it .nii.gz or .nii")
    run = TrainedRun(run_dir, device)
    data = run.record.data
    volume = load_case(case_at(case_dir), data["modalities"], with_label=False)
    window = tuple(data["slice_size"])
    slices = slice_case(volume, window, keep="brain", cover_brain=True)
    classes = segment_windows(run, slices.images, window, batch_size)
    predictions = {int(z): from_contiguous(c, slices.convention) for z, c in zip(slices.slice_index, classes)}
    labels = place_slices(slices.shape, slices.crop, slices.images.shape[-2:], predictions).astype(np.uint8)
    image = nib.Nifti1Image(labels, slices.affine)
    image.set_data_dtype(np.uint8)
    write_atomic(out_path, lambda tmp: nib.save(image, tmp))
    return out_path
