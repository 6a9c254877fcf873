"""Inference with a trained run: fuse one image pair, or segment one BraTS case into a NIfTI label map.

Both read raw files through the same readers and normalisation as preprocessing, so a checkpoint sees at
inference exactly the kind of input it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from .data import DataError
from .data.brats import find_cases, from_contiguous, load_case, slice_case
from .data.colour import rebuild_rgb, rgb_to_ycbcr, to_uint8
from .data.paired import read_image
from .data.store import place_slices
from .atomic import write_atomic
from .trained import TrainedRun


def _luminance(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 gray or RGB -> (Y in [0, 1], Cb/Cr (2, H, W) in [0, 1] or None), as the paired reader does."""
    if image.ndim == 2:
        return image.astype(np.float32) / 255, None
    ycbcr = rgb_to_ycbcr(image).astype(np.float32) / 255
    return ycbcr[..., 0], np.moveaxis(ycbcr[..., 1:], -1, 0)


def fuse_files(run_dir: Path, a_path: Path, b_path: Path, out_path: Path, device: str = "auto") -> Path:
    """Fuse ``a`` (anatomical) with ``b``; if ``b`` is colour the output is rebuilt in colour from its Cb/Cr."""
    run = TrainedRun(run_dir, device)
    a_img, b_img = read_image(a_path), read_image(b_path)
    if a_img.shape[:2] != b_img.shape[:2]:
        raise DataError(f"{a_path} is {a_img.shape[1]}x{a_img.shape[0]} but {b_path} is "
                        f"{b_img.shape[1]}x{b_img.shape[0]}: a pair must be registered and of one size")
    a, _ = _luminance(a_img)
    b, chroma = _luminance(b_img)
    fused = run.fuse(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0].cpu().numpy()
    pixels = to_uint8(rebuild_rgb(fused, chroma) if chroma is not None else fused)
    out_path = Path(out_path)
    write_atomic(out_path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
    return out_path


def segment_case(run_dir: Path, case_dir: Path, out_path: Path, device: str = "auto", batch_size: int = 16) -> Path:
    """Segment every brain slice of a BraTS case; write labels in its geometry and label convention."""
    run = TrainedRun(run_dir, device)
    data = run.record.data
    case_dir = Path(case_dir)
    matches = [c for c in find_cases(case_dir.parent) if c.folder.resolve() == case_dir.resolve()]
    if not matches:
        raise DataError(f"{case_dir}: not a BraTS case folder (expected <case>/<case>_<modality>.nii.gz files)")
    volume = load_case(matches[0], data["modalities"], with_label=False)
    slices = slice_case(volume, tuple(data["slice_size"]), keep="brain")
    predictions = {}
    for start in range(0, len(slices.images), batch_size):
        batch = torch.from_numpy(slices.images[start:start + batch_size])
        classes = run.segment(batch).argmax(1).cpu().numpy().astype(np.uint8)
        for z, pred in zip(slices.slice_index[start:start + batch_size], classes):
            predictions[int(z)] = from_contiguous(pred, slices.convention)
    labels = place_slices(slices.shape, slices.crop, data["slice_size"], predictions).astype(np.uint8)
    out_path = Path(out_path)
    image = nib.Nifti1Image(labels, slices.affine)
    image.set_data_dtype(np.uint8)
    write_atomic(out_path, lambda tmp: nib.save(image, tmp))
    return out_path
