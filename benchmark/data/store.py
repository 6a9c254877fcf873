"""HDF5 slice stores (format fixed in docs/DESIGN.md): atomic writer, lazy torch Dataset, volume reassembly."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import clean_stale_partials, partial_path
from . import DataError
from .window import overlap

STRING = h5py.string_dtype("utf-8")


class StoreWriter:
    """Appends slices to a temporary file beside ``path``; renamed onto ``path`` only when the ``with`` block ends
    without an exception, and deleted otherwise, so a store is either complete or absent.

    Items are chunked one per slice, uncompressed: random access (training batches) reads exactly one chunk
    per item and no CPU goes to (de)compression. The file attribute ``content_digest`` is a SHA-256 digest of
    everything written (attributes, items, geometry): the store's identity in the fingerprints of the runs
    trained on it, computed on the way at no extra read.
    """

    def __init__(self, path: Path | str, *, kind: str, modalities: Sequence[str], slice_size: Sequence[int],
                 labels: bool, chroma: bool = False, label_convention: str | None = None,
                 attrs: Mapping[str, Any] | None = None):
        self.path = Path(path)
        self.n_channels = len(modalities)
        self.size = (int(slice_size[0]), int(slice_size[1]))
        self.has_labels, self.has_chroma = labels, chroma
        self._attrs = {"dataset_kind": kind, "modalities": json.dumps(list(modalities)), "slice_size": self.size}
        if label_convention is not None:
            self._attrs["label_convention"] = label_convention
        self._attrs.update(attrs or {})
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self.n_items = 0
        self._digest = hashlib.sha256(json.dumps(self._attrs, sort_keys=True, default=str).encode("utf-8"))

    def _hash(self, key: str, block: np.ndarray) -> None:
        self._digest.update(f"|{key}:{block.dtype.str}:{block.shape}|".encode("utf-8"))
        self._digest.update(np.ascontiguousarray(block))

    def __enter__(self) -> "StoreWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(self.path)
        self._tmp = partial_path(self.path)
        try:
            self._file = h5py.File(self._tmp, "x")
            self._file.attrs.update(self._attrs)
            H, W = self.size
            self._create("images", (self.n_channels, H, W), np.float32)
            if self.has_labels:
                self._create("labels", (H, W), np.uint8)
            if self.has_chroma:
                self._create("chroma", (2, H, W), np.float32)
            for name, dtype in (("patient", STRING), ("slice_index", np.int32), ("name", STRING)):
                self._file.create_dataset(name, (0,), dtype=dtype, maxshape=(None,), chunks=(4096,))
        except BaseException:
            self._discard()
            raise
        return self

    def _create(self, name: str, item_shape: tuple[int, ...], dtype: Any) -> None:
        self._file.create_dataset(name, (0,) + item_shape, dtype=dtype, maxshape=(None,) + item_shape,
                                  chunks=(1,) + item_shape)

    def append(self, images: np.ndarray, *, patient: Sequence[str], slice_index: Sequence[int], name: Sequence[str],
               labels: np.ndarray | None = None, chroma: np.ndarray | None = None) -> None:
        """Add N items: ``images`` (N, M, H, W), per-item ``patient`` / ``slice_index`` / ``name``."""
        n = len(images)
        H, W = self.size
        if images.shape[1:] != (self.n_channels, H, W):
            raise ValueError(f"images of shape {images.shape[1:]} do not fit the store's {(self.n_channels, H, W)}")
        if (labels is not None) != self.has_labels or (chroma is not None) != self.has_chroma:
            raise ValueError("labels / chroma must be given exactly when the store was declared with them")
        if not len(patient) == len(slice_index) == len(name) == n:
            raise ValueError("patient, slice_index and name need one entry per image")
        per_item = {"images": (images, np.float32), "labels": (labels, np.uint8), "chroma": (chroma, np.float32)}
        for key, (block, dtype) in per_item.items():
            if block is not None:
                dset = self._file[key]
                dset.resize(self.n_items + n, axis=0)
                block = np.ascontiguousarray(block, dtype=dtype)
                self._hash(key, block)
                for k in range(n):  # one raw chunk per item: skips HDF5's type conversion and chunk cache
                    dset.id.write_direct_chunk((self.n_items + k,) + (0,) * (block.ndim - 1), block[k])
        for key, block in (("patient", list(patient)), ("slice_index", np.asarray(slice_index, np.int32)),
                           ("name", list(name))):
            self._hash(key, np.frombuffer("\0".join(block).encode("utf-8"), np.uint8) if isinstance(block, list)
                       else block)
            dset = self._file[key]
            dset.resize(self.n_items + n, axis=0)
            dset[self.n_items:] = block
        self.n_items += n

    def add_geometry(self, patient: str, *, shape: Sequence[int], affine: np.ndarray, crop: Sequence[int]) -> None:
        """Where a patient's H x W windows sit in its original (X, Y, Z) volume, for ``reassemble_volume``."""
        group = self._file.require_group("geometry").create_group(patient)
        values = {"shape": np.asarray(shape, np.int64), "affine": np.asarray(affine, np.float64),
                  "crop": np.asarray(crop, np.int64)}
        group.attrs.update(values)
        for key, value in values.items():
            self._hash(f"geometry/{patient}/{key}", value)

    def _discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._discard()
            return
        try:
            self._file.attrs["content_digest"] = self._digest.hexdigest()[:16]
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self._discard()
            raise


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_store_attrs(path: Path | str) -> dict[str, Any]:
    """File attributes with ``modalities`` as a list and ``slice_size`` as (H, W), plus ``n_items``,
    ``has_labels``, ``has_chroma`` and the list of ``patients`` (sorted, distinct)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            attrs["n_items"] = len(f["images"])
            attrs["has_labels"], attrs["has_chroma"] = "labels" in f, "chroma" in f
            attrs["patients"] = sorted(set(f["patient"].asstr()[:]))
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a readable slice store ({exc})") from exc
    attrs["modalities"] = json.loads(attrs["modalities"])
    return attrs


class SliceDataset(Dataset):
    """Items of a slice store as dicts of tensors (see docs/DESIGN.md).

    The HDF5 file is opened on first access in each process (h5py handles must not cross a fork), so the
    dataset can be used with DataLoader workers. Per-item metadata (``patients``, ``slice_indices``, ``names``)
    is read once into memory for samplers and evaluation.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            with h5py.File(self.path, "r") as f:
                self.patients = np.asarray(f["patient"].asstr()[:], dtype=object)
                self.slice_indices = f["slice_index"][:]
                self.names = np.asarray(f["name"].asstr()[:], dtype=object)
                self.has_labels, self.has_chroma = "labels" in f, "chroma" in f
        except (OSError, KeyError) as exc:
            raise DataError(f"{self.path}: not a readable slice store ({exc})") from exc
        self._file: h5py.File | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.patients)

    def _arrays(self) -> dict[str, h5py.Dataset]:
        """Dataset handles of this process, cached: looking a dataset up by name costs more than reading an item."""
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            self._datasets = {k: self._file[k] for k in ("images", "labels", "chroma") if k in self._file}
        return self._datasets

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index = int(index) % n
        arrays = self._arrays()
        item: dict[str, Any] = {"images": torch.from_numpy(arrays["images"][index])}
        if self.has_labels:
            item["label"] = torch.from_numpy(arrays["labels"][index].astype(np.int64))
        if self.has_chroma:
            item["chroma"] = torch.from_numpy(arrays["chroma"][index])
        item.update(patient=self.patients[index], slice_index=int(self.slice_indices[index]), index=index)
        return item

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_datasets": {}, "_pid": None}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._datasets = None, {}


def read_geometry(store_path: Path | str) -> dict[str, dict[str, Any]]:
    """Every patient's ``shape``, ``affine`` and ``crop`` (BraTS stores; empty for paired stores)."""
    with h5py.File(store_path, "r") as f:
        if "geometry" not in f:
            return {}
        return {patient: {"shape": tuple(group.attrs["shape"].tolist()), "affine": np.asarray(group.attrs["affine"]),
                          "crop": tuple(group.attrs["crop"].tolist())}
                for patient, group in f["geometry"].items()}


def reassemble_volume(store_path: Path | str, patient: str,
                      slice_predictions: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Put H x W slice predictions of a BraTS patient back into its original (X, Y, Z) grid.

    Voxels outside the stored window and slices without a prediction are 0. Returns (volume, affine); the
    volume has the predictions' dtype (uint8 when there are none).
    """
    store_path = Path(store_path)
    with h5py.File(store_path, "r") as f:
        if "geometry" not in f or patient not in f["geometry"]:
            raise DataError(f"{store_path}: no geometry for patient {patient!r}")
        geometry = f["geometry"][patient].attrs
        shape, affine, crop = tuple(geometry["shape"].tolist()), geometry["affine"], geometry["crop"].tolist()
        size = tuple(int(v) for v in f.attrs["slice_size"])
    return place_slices(shape, crop, size, slice_predictions), affine


def place_slices(shape: Sequence[int], crop: Sequence[int], slice_size: Sequence[int],
                 slice_predictions: Mapping[int, np.ndarray]) -> np.ndarray:
    """Inverse of the slicing window: (H, W) slices at axial indices -> an (X, Y, Z) volume of ``shape``."""
    H, W = slice_size
    predictions = {int(z): np.asarray(p) for z, p in slice_predictions.items()}
    dtype = np.result_type(*predictions.values()) if predictions else np.uint8
    volume = np.zeros(tuple(shape), dtype)
    (sx, dx), (sy, dy) = overlap(crop[0], H, shape[0]), overlap(crop[1], W, shape[1])
    for z, prediction in predictions.items():
        if prediction.shape != (H, W):
            raise ValueError(f"prediction for slice {z} has shape {prediction.shape}, expected {(H, W)}")
        if not 0 <= z < shape[2]:
            raise ValueError(f"slice index {z} outside the volume's {shape[2]} axial slices")
        volume[sx, sy, z] = prediction[dx, dy]
    return volume