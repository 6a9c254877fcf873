"""A run's fused images, made once: a trained fusion run applied to every slice of a store split.

The fused store has the format of a slice store (docs/DESIGN.md) with one channel, ``fused``, and every other
dataset (labels, chroma, patients, names, geometry) copied from the source store, in the same order. A disjoint
pipeline's follower trains on it and evaluation reads it, so each slice is fused exactly once per run, however
costly the method (a diffusion sampler) and however many epochs read it. Its attributes name the model that fused
it (``fused_by``: the run; ``model_fingerprint``: the fingerprint of its ``model.safetensors``), so that a fused
store left from an earlier model is recognised; the run's fused store folder is locked while it is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .atomic import folder_lock
from .data.store import SliceDataset, StoreWriter, read_geometry, read_store_attrs
from .trained import TrainedRun
from .training.checkpoint import model_fingerprint


def fuse_splits(run_dir: Path | str, store_dir: Path | str, splits: Sequence[str], out_dir: Path | str, *,
                batch_size: int = 16, device: str = "auto", progress: bool = True) -> list[Path]:
    """Fuse the ``splits`` of the store in ``store_dir`` with the trained run in ``run_dir`` into ``out_dir``."""
    run = TrainedRun(run_dir, device)
    with folder_lock(out_dir, f"fusing the stores of {run.record.path}"):
        return [fuse_store(run, Path(store_dir) / f"{split}.h5", Path(out_dir) / f"{split}.h5",
                           batch_size=batch_size, progress=progress) for split in splits]


def fuse_store(run: TrainedRun, store_path: Path | str, out_path: Path | str, *, batch_size: int = 16,
               progress: bool = True) -> Path:
    """Fuse every slice of ``store_path`` with a trained run into ``out_path`` (written atomically)."""
    source = SliceDataset(store_path)
    attrs = read_store_attrs(store_path)
    torch.manual_seed(run.record.seed)  # samplers draw noise: fixed per run
    loader = DataLoader(source, batch_size=batch_size, shuffle=False)
    extra = {"fused_by": run.record.path, "split": attrs.get("split", ""),
             "model_fingerprint": model_fingerprint(run.run_dir / "model.safetensors")}
    with StoreWriter(out_path, kind=attrs["dataset_kind"], modalities=["fused"], slice_size=attrs["slice_size"],
                     labels=source.has_labels, chroma=source.has_chroma,
                     label_convention=attrs.get("label_convention"), attrs=extra) as writer:
        for batch in tqdm(loader, desc=f"fuse {Path(store_path).name} with {run.record.path}", unit="batch",
                          disable=not progress):
            images = batch["images"]
            fused = run.fuse(images[:, :1], images[:, 1:2]).cpu().numpy()
            index = batch["index"].numpy()
            writer.append(fused, labels=batch["label"].numpy() if source.has_labels else None,
                          chroma=batch["chroma"].numpy() if source.has_chroma else None,
                          patient=list(batch["patient"]), slice_index=batch["slice_index"].numpy(),
                          name=[str(n) for n in np.asarray(source.names)[index]])
        for patient, geometry in read_geometry(store_path).items():
            writer.add_geometry(patient, **geometry)
    return Path(out_path)
