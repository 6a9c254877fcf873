"""Raw folders -> stores end to end on phantoms: splits, keep rules, reassembly, atomicity, determinism."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from benchmark.data import DataError, brats
from benchmark.data.preprocess import preprocess_brats, preprocess_paired
from benchmark.data.splits import assert_disjoint
from benchmark.data.store import SliceDataset, read_store_attrs, reassemble_volume
from benchmark.data.synthetic import write_brats_phantoms, write_paired_phantoms
from benchmark.perf import preprocess_speed

SIZE = (40, 48)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_brats_phantoms(root, 5, seed=0, shape=(48, 48, 20))
    return root


@pytest.fixture(scope="module")
def stores(raw, tmp_path_factory) -> dict[str, Path]:
    return preprocess_brats(raw, tmp_path_factory.mktemp("out"), slice_size=SIZE, keep=0.5, seed=1, progress=False)


def _content(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][:] for k in ("images", "labels", "patient", "slice_index", "name")}


def test_outputs_and_patient_level_splits(stores):
    assert {k: p.name for k, p in stores.items()} == {"train": "train.h5", "val": "val.h5", "test": "test.h5",
                                                      "splits": "splits.json"}
    splits = json.loads(stores["splits"].read_text())
    assert_disjoint(splits)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [3, 1, 1] and splits["seed"] == 1
    for name in ("train", "val", "test"):
        attrs = read_store_attrs(stores[name])
        assert attrs["patients"] == splits[name] and attrs["slice_size"] == SIZE
        assert attrs["dataset_kind"] == "brats" and attrs["modalities"] == ["t1ce", "flair"]
        assert attrs["label_convention"] == "brats2018" and attrs["split"] == name
    assert json.loads(read_store_attrs(stores["test"])["keep"]) == "brain"
    assert json.loads(read_store_attrs(stores["val"])["keep"]) == 0.5


def test_keep_ratio_for_training_and_all_brain_slices_for_test(raw, stores):
    cases = {c.case_id: c for c in brats.find_cases(raw)}
    for name in ("train", "val", "test"):
        ds = SliceDataset(stores[name])
        for patient in sorted(set(ds.patients)):
            volume = brats.load_case(cases[patient])
            brain_z = np.flatnonzero(brats.brain_mask(volume.images).any(axis=(0, 1)))
            tumour_z = np.flatnonzero(volume.label.any(axis=(0, 1)))
            stored = sorted(ds.slice_indices[ds.patients == patient].tolist())
            if name == "test":
                assert stored == brain_z.tolist()
            else:
                extra = min(round(0.5 * len(tumour_z)), len(brain_z) - len(tumour_z))
                assert set(tumour_z) <= set(stored) <= set(brain_z) and len(stored) == len(tumour_z) + extra
            names = ds.names[ds.patients == patient]
            assert names[0] == f"{patient}_z{stored[0]}"


def test_test_store_reassembles_to_the_original_labels(raw, stores):
    ds = SliceDataset(stores["test"])
    patient = ds.patients[0]
    case = next(c for c in brats.find_cases(raw) if c.case_id == patient)
    volume = brats.load_case(case)
    predictions = {ds[i]["slice_index"]: ds[i]["label"].numpy().astype(np.uint8)
                   for i in np.flatnonzero(ds.patients == patient)}
    reassembled, affine = reassemble_volume(stores["test"], patient, predictions)
    np.testing.assert_array_equal(reassembled, brats.to_contiguous(volume.label))  # 40x48 window holds the tumour
    np.testing.assert_array_equal(affine, volume.affine)
    np.testing.assert_array_equal(brats.from_contiguous(reassembled), volume.label)


def test_rerun_reuses_splits_and_is_deterministic_across_worker_counts(raw, stores, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    shutil.copy(stores["splits"], out / "splits.json")
    again = preprocess_brats(raw, out, slice_size=SIZE, keep=0.5, seed=1, workers=1, progress=False)
    assert again["splits"].read_text() == stores["splits"].read_text()
    for name in ("train", "test"):
        a, b = _content(stores[name]), _content(again[name])
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    with pytest.raises(DataError, match="made with seed 1"):
        preprocess_brats(raw, out, slice_size=SIZE, keep=0.5, seed=2, progress=False)


def test_a_bad_case_leaves_no_store_behind(raw, tmp_path):
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    seg = broken / "Phantom_003" / "Phantom_003_seg.nii.gz"
    seg.write_bytes(seg.read_bytes()[:200])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"Phantom_003_seg\.nii\.gz: not a readable NIfTI"):
        preprocess_brats(broken, out, slice_size=SIZE, progress=False)
    assert not out.exists()  # no store, no lock file, not even the folder the lock made
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BraTS cases"):
        preprocess_brats(tmp_path / "empty", tmp_path / "o2", progress=False)


def test_mixed_namings_need_an_explicit_convention(raw, tmp_path):
    mixed = Path(shutil.copytree(raw, tmp_path / "raw"))
    case = mixed / "Phantom_004"
    for key, suffix in brats.NAMINGS["brats2023"][1].items():
        (case / f"Phantom_004_{key}.nii.gz").rename(case / f"Phantom_004-{suffix}.nii.gz")
    with pytest.raises(DataError, match="mixes the 2018-2021 and 2023"):
        preprocess_brats(mixed, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="label_convention"):
        preprocess_brats(mixed, tmp_path / "out", label_convention="brats2021", progress=False)


@pytest.mark.parametrize("setting", [{"keep": "most"}, {"slice_size": (0, 4)}, {"workers": 0},
                                     {"modalities": ("flair",)}, {"split_fractions": (0.5, 0.5, 0.5)}])
def test_bad_settings_fail_before_writing(raw, tmp_path, setting):
    with pytest.raises(ValueError):
        preprocess_brats(raw, tmp_path / "out", progress=False, **setting)
    assert not (tmp_path / "out").exists()


def test_paired_stores_keep_chroma_and_split_by_study(tmp_path):
    raw = write_paired_phantoms(tmp_path / "raw", "SPECT", n_studies=5, slices_per_study=3, seed=2, size=32)
    paths = preprocess_paired(raw, tmp_path / "out", functional="SPECT", seed=0)
    splits = json.loads(paths["splits"].read_text())
    assert [len(splits[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    seen = set()
    for name in ("train", "val", "test"):
        attrs = read_store_attrs(paths[name])
        assert attrs["dataset_kind"] == "paired" and attrs["modalities"] == ["MRI", "SPECT"] and attrs["has_chroma"]
        assert "label_convention" not in attrs and attrs["patients"] == splits[name]
        ds = SliceDataset(paths[name])
        item = ds[0]
        assert set(item) == {"images", "chroma", "patient", "slice_index", "index"}
        assert ds.slice_indices.tolist() == list(range(len(ds))) and len(ds) == 3 * len(splits[name])
        seen |= set(ds.names)
    assert len(seen) == 15


def test_paired_gfp_with_mismatched_pair_and_empty_val(tmp_path):
    raw = write_paired_phantoms(tmp_path / "raw", "GFP", n_studies=3, slices_per_study=2, seed=2, size=32)
    Image.new("RGB", (48, 48)).save(raw / "GFP" / "02-B02-g.jpg")
    with pytest.warns(UserWarning, match="02-B02"):
        paths = preprocess_paired(raw, tmp_path / "out", anatomical="PC", functional="GFP",
                                  split_fractions=(0.5, 0.0, 0.5), seed=0)
    assert read_store_attrs(paths["val"])["n_items"] == 0
    total = sum(read_store_attrs(paths[k])["n_items"] for k in ("train", "val", "test"))
    assert total == 5
    with pytest.raises(DataError, match="size mismatch"):
        preprocess_paired(raw, tmp_path / "out2", functional="GFP", on_mismatch="error")
    assert not (tmp_path / "out2").exists()


def test_speed_script_runs_on_phantoms(raw, capsys):
    figures = preprocess_speed.main(["--data", str(raw), "--repeats", "1", "--batches", "3", "--slice-size", "32", "32"])
    out = capsys.readouterr().out
    assert "full preprocessing" in out and "random batch of 8 slices" in out
    assert figures["full_s"] > 0 and figures["decode_s"] > 0 and figures["batch_ms"] > 0
