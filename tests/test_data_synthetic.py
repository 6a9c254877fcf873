"""Phantoms: real layouts, determinism per seed, and the contrasts that make fusion necessary."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmark.data import brats
from benchmark.data.synthetic import write_brats_phantoms, write_paired_phantoms


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    write_brats_phantoms(root, 3, seed=11)
    return root


def _volumes(root):
    return [brats.load_case(c, brats.MODALITIES) for c in brats.find_cases(root)]


def test_brats_phantoms_use_the_2018_layout(brats_root):
    cases = brats.find_cases(brats_root)
    assert [c.case_id for c in cases] == ["Phantom_000", "Phantom_001", "Phantom_002"]
    assert {c.naming for c in cases} == {"brats2018"}
    assert [brats.read_nifti(c.path("seg"))[0].dtype for c in cases] == [np.uint8, np.int16, np.uint8]
    for volume in _volumes(brats_root):
        assert volume.images[0].shape == (64, 64, 24) and volume.images[0].dtype == np.int16
        assert set(np.unique(volume.label)) == {0, 1, 2, 4}
        brain_z = brats.brain_mask(volume.images).any(axis=(0, 1))
        tumour_z = volume.label.any(axis=(0, 1))
        assert 0 < tumour_z.sum() < brain_z.sum() < 24  # empty end slices, healthy and tumour slices


def test_brats_phantoms_are_deterministic_and_vary(tmp_path, brats_root):
    write_brats_phantoms(tmp_path / "again", 2, seed=11)
    write_brats_phantoms(tmp_path / "other", 2, seed=12)
    ref, again, other = _volumes(brats_root)[:2], _volumes(tmp_path / "again"), _volumes(tmp_path / "other")
    for a, b in zip(ref, again):
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.images[1], b.images[1])
    assert not np.array_equal(ref[0].label, other[0].label)
    assert not np.array_equal(ref[0].label, ref[1].label)  # shape and position vary between cases


def test_neither_t1ce_nor_flair_alone_separates_all_regions(brats_root):
    """T1ce: ET bright, NCR dark, ED like healthy tissue. FLAIR: ED bright, ET / NCR close to ED."""
    gaps = {"t1ce": [], "flair": []}
    for volume in _volumes(brats_root):
        mask = brats.brain_mask(volume.images)
        classes = brats.to_contiguous(volume.label)
        for name in gaps:
            image = brats.normalise_volume(volume.images[volume.modalities.index(name)], mask)
            healthy, ncr, ed, et = (np.median(image[mask & (classes == k)]) for k in range(4))
            gaps[name].append((abs(ed - healthy), abs(et - ed), abs(ncr - ed), abs(et - ncr)))
    t1ce, flair = np.mean(gaps["t1ce"], axis=0), np.mean(gaps["flair"], axis=0)
    assert t1ce[2] > 0.3 and t1ce[3] > 0.5  # T1ce separates NCR and ET from the rest...
    assert t1ce[0] < 0.2 < flair[0]  # ...but not ED from healthy tissue, which FLAIR does
    assert flair[1] < 0.2 and flair[2] < 0.25  # FLAIR barely tells ET / NCR from ED


@pytest.mark.parametrize("pair,anat,func,func_mode", [("PET", "MRI/1001.png", "PET/1001.png", "RGB"),
                                                      ("SPECT", "MRI/2002.png", "SPECT/2002.png", "RGB"),
                                                      ("CT", "MRI/1002.png", "CT/1002.png", "L"),
                                                      ("GFP", "PCI/02-B01-t.jpg", "GFP/02-B01-g.jpg", "RGB")])
def test_paired_phantoms_layouts(tmp_path, pair, anat, func, func_mode):
    root = write_paired_phantoms(tmp_path / "a", pair, n_studies=2, slices_per_study=2, seed=4, size=(24, 32))
    anatomical, functional = Image.open(root / anat), Image.open(root / func)
    assert anatomical.size == functional.size == (32, 24) and functional.mode == func_mode
    assert anatomical.mode == ("RGB" if pair == "GFP" else "L")
    again = write_paired_phantoms(tmp_path / "b", pair, n_studies=2, slices_per_study=2, seed=4, size=(24, 32))
    assert (again / func).read_bytes() == (root / func).read_bytes()
    other = write_paired_phantoms(tmp_path / "c", pair, n_studies=2, slices_per_study=2, seed=5, size=(24, 32))
    assert (other / func).read_bytes() != (root / func).read_bytes()
    assert np.asarray(functional).std() > 0 and np.asarray(anatomical).std() > 0
