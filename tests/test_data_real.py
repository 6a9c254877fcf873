"""The readers on the real sample data beside the checkout (../shared/data); skipped when it is absent."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmark.data import DataError, brats
from benchmark.data.paired import find_pairs, load_paired
from benchmark.data.preprocess import preprocess_paired
from benchmark.data.store import SliceDataset

pytestmark = pytest.mark.realdata

BRATS_CASES = ["Brats18_2013_11_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA01_201_1", "Brats18_TCIA02_135_1",
               "Brats18_TCIA10_628_1", "Brats18_TCIA13_623_1"]


def test_all_six_brats_cases_load_with_their_labels(shared_data):
    cases = brats.find_cases(shared_data / "brats2018")
    assert [c.case_id for c in cases] == BRATS_CASES and {c.naming for c in cases} == {"brats2018"}
    assert brats.read_nifti(cases[0].path("seg"))[0].dtype == np.int16  # the 2013 case stores its seg as int16
    for case in cases:
        volume = brats.load_case(case)
        assert volume.images[0].shape == (240, 240, 155) and volume.label.dtype == np.uint8
        assert set(np.unique(volume.label)) <= {0, 1, 2, 4} and 4 in volume.label
        classes = brats.to_contiguous(volume.label)
        assert classes.max() == 3
        np.testing.assert_array_equal(brats.from_contiguous(classes), volume.label)


def test_real_case_slices_and_normalisation(shared_data):
    case = brats.find_cases(shared_data / "brats2018")[1]
    volume = brats.load_case(case)
    sliced = brats.slice_case(volume, (160, 192), keep="tumour")
    assert sliced.images.shape[1:] == (2, 160, 192) and 0 <= sliced.images.min() and sliced.images.max() == 1
    assert all(sliced.labels[k].any() for k in range(len(sliced.labels)))
    assert sliced.labels.sum() > 0 and set(np.unique(sliced.labels)) == {0, 1, 2, 3}


@pytest.mark.parametrize("pair,functional", [("PET-MRI", "PET"), ("SPECT-MRI", "SPECT")])
def test_harvard_colour_pairs(shared_data, pair, functional):
    data = load_paired(shared_data / "harvard" / pair, functional=functional)
    assert data.modalities == ("MRI", functional) and data.images.shape[1:] == (2, 256, 256)
    assert data.chroma is not None and data.chroma.shape == data.images.shape
    expected_studies = {"PET": ["25", "30"], "SPECT": ["10", "11", "15", "18", "21", "22", "25", "28"]}[functional]
    assert sorted(set(data.patients)) == expected_studies
    name = data.names[7]
    ycc = np.asarray(Image.open(shared_data / "harvard" / pair / functional / f"{name}.png").convert("YCbCr"))
    np.testing.assert_array_equal(data.images[7, 1], ycc[..., 0] / np.float32(255))
    np.testing.assert_array_equal(data.chroma[7], np.moveaxis(ycc[..., 1:], -1, 0) / np.float32(255))


def test_harvard_ct_is_gray_and_one_digit_studies_are_kept_apart(shared_data):
    root = shared_data / "harvard" / "CT-MRI"
    data = load_paired(root, functional="CT")
    assert data.chroma is None and data.modalities == ("MRI", "CT")
    assert sorted(set(data.patients)) == ["02", "16", "20", "21", "28"]
    assert data.patients[data.names.index("2004")] == "02" and data.patients[data.names.index("20005")] == "20"
    np.testing.assert_array_equal(data.images[0, 1], np.asarray(Image.open(root / "CT" / f"{data.names[0]}.png")) / np.float32(255))


def test_gfp_pairs_and_the_mismatched_02_c05(shared_data, tmp_path):
    root = shared_data / "gfp_pc"
    _, items = find_pairs(root)
    assert len(items) == 73 and {i.patient[:2] for i in items} == {"02", "04"}
    with pytest.warns(UserWarning, match=r"02-C05-t\.jpg is 358x358 but .*02-C05-g\.jpg is 512x512"):
        paths = preprocess_paired(root, tmp_path, anatomical="PC", functional="GFP", seed=0)
    names = set()
    for split in ("train", "val", "test"):
        ds = SliceDataset(paths[split])
        assert ds.has_chroma and len(ds) > 0
        names |= set(ds.names)
    assert len(names) == 72 and "02-C05" not in names
    with pytest.raises(DataError, match=r"size mismatch in pair 02-C05"):
        load_paired(root, on_mismatch="error")
