"""HDF5 slice stores: atomic writing, the lazy Dataset (also in DataLoader workers), attributes, reassembly."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmark.data import DataError
from benchmark.data.store import SliceDataset, StoreWriter, read_store_attrs, reassemble_volume

H, W = 8, 6


def _write(path: Path, n: int = 5, chroma: bool = False, fail_after_append: bool = False) -> None:
    rng = np.random.default_rng(0)
    with StoreWriter(path, kind="brats", modalities=["t1ce", "flair"], slice_size=(H, W), labels=not chroma,
                     chroma=chroma, label_convention="brats2018") as writer:
        writer.append(rng.random((n, 2, H, W), dtype=np.float32),
                      labels=None if chroma else rng.integers(0, 4, (n, H, W)).astype(np.uint8),
                      chroma=rng.random((n, 2, H, W), dtype=np.float32) if chroma else None,
                      patient=["a"] * 3 + ["b"] * (n - 3), slice_index=range(10, 10 + n), name=[f"s{i}" for i in range(n)])
        writer.add_geometry("a", shape=(10, 12, 20), affine=np.diag([-1.0, -1, 1, 1]), crop=(-1, 4))
        if fail_after_append:
            raise RuntimeError("boom")


def test_writer_is_atomic(tmp_path):
    store = tmp_path / "train.h5"
    _write(store)
    before = store.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        _write(store, n=7, fail_after_append=True)
    assert store.read_bytes() == before  # the old store survives a failed rewrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]  # no temporary left
    with pytest.raises(RuntimeError):
        _write(tmp_path / "new.h5", fail_after_append=True)
    assert not (tmp_path / "new.h5").exists()


def test_content_digest_identifies_what_was_written(tmp_path):
    _write(tmp_path / "a.h5")
    _write(tmp_path / "b.h5")
    _write(tmp_path / "c.h5", n=6)
    digest = {name: read_store_attrs(tmp_path / f"{name}.h5")["content_digest"] for name in "abc"}
    assert digest["a"] == digest["b"] != digest["c"] and len(digest["a"]) == 16


def test_writer_removes_the_partial_files_of_dead_writers(tmp_path):
    """Issue 12, defect 6: a killed preprocess left ``.train.h5.<pid>-<uuid>.partial.h5`` that no run removed."""
    named_by_a_dead_writer = subprocess.run(
        [sys.executable, "-c", "import os; from benchmark.atomic import partial_path; "
                               "print(os.getpid(), partial_path('train.h5'))"],
        capture_output=True, text=True, check=True).stdout.split()
    dead = named_by_a_dead_writer[0]
    stale = [tmp_path / named_by_a_dead_writer[1],
             tmp_path / f".train.h5.{dead}-0123abcd.partial.h5"]  # as the earlier writers named them
    kept = [tmp_path / f".train.h5.{os.getpid()}-89abcdef.partial.h5",  # a live writer's
            tmp_path / f".train.h5.{dead}-0123abcd-elsewhere.partial.h5",  # another host's: cannot be checked
            tmp_path / f".val.h5.{dead}-0123abcd.partial.h5"]  # another target's, cleaned by its own writer
    for path in stale + kept:
        path.write_bytes(b"half a store")
    _write(tmp_path / "train.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["train.h5", *(p.name for p in kept)])


def test_append_rejects_inconsistent_blocks(tmp_path):
    with pytest.raises(ValueError, match="do not fit"):
        with StoreWriter(tmp_path / "x.h5", kind="paired", modalities=["MRI", "PET"], slice_size=(H, W), labels=False) as w:
            w.append(np.zeros((1, 2, H + 1, W), np.float32), patient=["a"], slice_index=[0], name=["n"])
    with pytest.raises(ValueError, match="labels / chroma"):
        with StoreWriter(tmp_path / "x.h5", kind="paired", modalities=["MRI", "PET"], slice_size=(H, W), labels=False) as w:
            w.append(np.zeros((1, 2, H, W), np.float32), labels=np.zeros((1, H, W), np.uint8), patient=["a"],
                     slice_index=[0], name=["n"])
    assert list(tmp_path.iterdir()) == []


def test_store_layout_follows_design(tmp_path):
    _write(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["images"].dtype == np.float32 and f["images"].shape == (5, 2, H, W)
        assert f["labels"].dtype == np.uint8 and f["labels"].shape == (5, H, W)
        assert f["slice_index"].dtype == np.int32 and f["patient"].asstr()[:].tolist() == ["a", "a", "a", "b", "b"]
        assert f["geometry/a"].attrs["crop"].tolist() == [-1, 4]
    attrs = read_store_attrs(tmp_path / "s.h5")
    assert attrs["dataset_kind"] == "brats" and attrs["modalities"] == ["t1ce", "flair"]
    assert attrs["label_convention"] == "brats2018" and attrs["slice_size"] == (H, W)
    assert (attrs["n_items"], attrs["has_labels"], attrs["has_chroma"], attrs["patients"]) == (5, True, False, ["a", "b"])
    with pytest.raises(DataError, match="not a readable slice store"):
        read_store_attrs(tmp_path / "missing.h5")


def test_dataset_items(tmp_path):
    _write(tmp_path / "s.h5")
    ds = SliceDataset(tmp_path / "s.h5")
    assert len(ds) == 5 and ds.patients.tolist() == ["a", "a", "a", "b", "b"] and ds.names[4] == "s4"
    item = ds[3]
    assert set(item) == {"images", "label", "patient", "slice_index", "index"}
    assert item["images"].dtype == torch.float32 and item["images"].shape == (2, H, W)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (H, W)
    assert (item["patient"], item["slice_index"], item["index"]) == ("b", 13, 3)
    with h5py.File(tmp_path / "s.h5") as f:
        np.testing.assert_array_equal(item["images"].numpy(), f["images"][3])
        np.testing.assert_array_equal(ds[-1]["label"].numpy(), f["labels"][4])
    with pytest.raises(IndexError):
        ds[5]
    _write(tmp_path / "c.h5", chroma=True)
    item = SliceDataset(tmp_path / "c.h5")[0]
    assert "label" not in item and item["chroma"].shape == (2, H, W)


def test_dataset_works_in_dataloader_workers_and_pickles_open(tmp_path):
    _write(tmp_path / "s.h5", n=12)
    ds = SliceDataset(tmp_path / "s.h5")
    ds[0]  # open the file in this process first: workers must reopen, not inherit the handle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and clone[1]["index"] == 1
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert [b["images"].shape for b in batches] == [(4, 2, H, W)] * 3
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(12))
    assert batches[0]["patient"] == ["a", "a", "a", "b"]


def test_reassemble_volume_places_windows_and_pads(tmp_path):
    _write(tmp_path / "s.h5")
    predictions = {10: np.arange(H * W, dtype=np.uint8).reshape(H, W), 15: np.ones((H, W), np.uint8)}
    volume, affine = reassemble_volume(tmp_path / "s.h5", "a", predictions)
    assert volume.shape == (10, 12, 20) and volume.dtype == np.uint8
    np.testing.assert_array_equal(affine, np.diag([-1.0, -1, 1, 1]))
    # crop (-1, 4): window row 0 lies outside the volume (padding), rows 1..7 land on x 0..6, columns on y 4..9
    np.testing.assert_array_equal(volume[0:7, 4:10, 10], predictions[10][1:8, :])
    assert volume[:, :, 15].sum() == 7 * 6 and volume.sum() == predictions[10][1:].sum() + 42
    with pytest.raises(DataError, match="no geometry for patient 'zz'"):
        reassemble_volume(tmp_path / "s.h5", "zz", {})
    with pytest.raises(ValueError, match="expected"):
        reassemble_volume(tmp_path / "s.h5", "a", {10: np.zeros((3, 3))})
    with pytest.raises(ValueError, match="outside"):
        reassemble_volume(tmp_path / "s.h5", "a", {20: np.zeros((H, W))})
    empty, _ = reassemble_volume(tmp_path / "s.h5", "a", {})
    assert empty.shape == (10, 12, 20) and not empty.any()
