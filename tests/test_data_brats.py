"""BraTS reader on synthetic phantoms: namings, validation errors, normalisation, labels, slicing."""
from __future__ import annotations

import gzip
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from benchmark.data import DataError, brats
from benchmark.data.synthetic import write_brats_phantoms

SHAPE = (40, 44, 16)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    write_brats_phantoms(root, 2, seed=3, shape=SHAPE)
    return root


@pytest.fixture
def case_copy(phantom_root, tmp_path) -> brats.BratsCase:
    """A private copy of phantom case 0, free to be damaged by the test."""
    src = phantom_root / "Phantom_000"
    shutil.copytree(src, tmp_path / "root" / src.name)
    return brats.find_cases(tmp_path / "root")[0]


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)


def _as_2023(case: brats.BratsCase, root: Path) -> Path:
    """Rewrite a 2018-named case with 2023 names (t1n, t1c, t2w, t2f) and ET labelled 3."""
    new_id = "BraTS-GLI-00001-000"
    folder = root / new_id
    folder.mkdir(parents=True)
    for key, suffix in brats.NAMINGS["brats2023"][1].items():
        image = nib.load(case.path(key))
        data = np.asanyarray(image.dataobj)
        if key == "seg":
            data = np.where(data == 4, 3, data).astype(np.uint8)
        _save(folder / f"{new_id}-{suffix}.nii.gz", data, image.affine)
    return folder


def test_find_cases_reads_both_namings_with_canonical_modalities(phantom_root, tmp_path):
    case18 = brats.find_cases(phantom_root)[0]
    _as_2023(case18, tmp_path)
    (case23,) = brats.find_cases(tmp_path)
    assert (case18.naming, case23.naming) == ("brats2018", "brats2023")
    v18 = brats.load_case(case18)
    v23 = brats.load_case(case23, ("t1c", "t2f"))  # 2023 names map to the canonical ones
    assert v23.modalities == ("t1ce", "flair") and v23.convention == "brats2023"
    assert set(np.unique(v18.label)) == {0, 1, 2, 4} and set(np.unique(v23.label)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(brats.to_contiguous(v18.label, "brats2018"), brats.to_contiguous(v23.label, "brats2023"))
    for a, b in zip(v18.images, v23.images):
        np.testing.assert_array_equal(a, b)


def test_modality_names_and_choices(phantom_root):
    assert [brats.canonical_modality(m) for m in ("T1N", "t1c", "t2w", "t2f", "flair")] == ["t1", "t1ce", "t2", "flair", "flair"]
    for bad in (["t1ce"], ["t1ce", "t1c"], ["t1ce", "pd"]):
        with pytest.raises(ValueError):
            brats.check_modalities(bad)
    case = brats.find_cases(phantom_root)[0]
    assert len(brats.load_case(case).images) == 2  # default t1ce + flair
    three = brats.load_case(case, ("t1", "t2", "flair"), with_label=False)
    assert three.modalities == ("t1", "t2", "flair") and three.label is None and len(three.images) == 3


def test_int16_and_uint8_segmentations_load_alike(phantom_root):
    cases = brats.find_cases(phantom_root)
    raw_dtypes = [brats.read_nifti(c.path("seg"))[0].dtype for c in cases]
    assert raw_dtypes == [np.uint8, np.int16]
    for case in cases:
        assert brats.load_case(case).label.dtype == np.uint8


def test_missing_modality_names_the_file(case_copy):
    case_copy.path("flair").unlink()
    with pytest.raises(DataError, match=r"Phantom_000_flair\.nii\.gz: missing modality 'flair'"):
        brats.load_case(case_copy)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "truncated_uncompressed"])
def test_corrupt_or_truncated_nifti_is_a_data_error(case_copy, damage):
    path = case_copy.path("t1ce")
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a NIfTI file at all" * 20)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    else:  # valid gzip of an incomplete image
        path.write_bytes(gzip.compress(gzip.decompress(raw)[:5000]))
    with pytest.raises(DataError, match=r"Phantom_000_t1ce\.nii\.gz: not a readable NIfTI"):
        brats.load_case(case_copy)


def _peak_bytes_of_failing_read(path, match: str) -> int:
    """Peak Python allocation while ``read_nifti(path)`` fails with a DataError matching ``match``."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=match):
            brats.read_nifti(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_damaged_gzip_size_trailer_is_a_data_error_without_a_big_allocation(case_copy):
    """Issue 12, defect 11: the trailer's ISIZE sized the output buffer: ~4 GiB for a damaged one."""
    path = case_copy.path("t1ce")
    raw = path.read_bytes()
    path.write_bytes(raw[:-4] + (2**32 - 7).to_bytes(4, "little"))
    assert _peak_bytes_of_failing_read(path, r"t1ce\.nii\.gz: not a readable NIfTI.*incorrect length check") < 64 * 2**20


def test_header_declaring_more_voxels_than_the_file_holds(case_copy):
    path = case_copy.path("t1ce")
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_shape((3000, 3000, 3000))
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + gzip.decompress(path.read_bytes())[352:]))
    expected = r"declares \(3000, 3000, 3000\) voxels of int16, 54,000,000,\d+ bytes"
    assert _peak_bytes_of_failing_read(path, expected) < 64 * 2**20


def test_uncompressed_and_multi_member_gzip_files_load(case_copy):
    reference = brats.load_case(case_copy)
    flair = case_copy.path("flair")
    raw = gzip.decompress(flair.read_bytes())
    flair.unlink()
    flair.with_suffix("").write_bytes(raw)  # <case>_flair.nii, uncompressed
    assert case_copy.path("flair").name == "Phantom_000_flair.nii"
    np.testing.assert_array_equal(brats.load_case(case_copy).images[1], reference.images[1])
    t1ce = case_copy.path("t1ce")
    raw = gzip.decompress(t1ce.read_bytes())
    t1ce.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))  # as bgzip writes blocks
    np.testing.assert_array_equal(brats.load_case(case_copy).images[0], reference.images[0])


def test_mismatched_shapes_and_affines(case_copy):
    flair = case_copy.path("flair")
    image = nib.load(flair)
    data = np.asanyarray(image.dataobj)
    _save(flair, data[:-2], image.affine)
    with pytest.raises(DataError, match=r"flair\.nii\.gz: shape \(38, 44, 16\) differs"):
        brats.load_case(case_copy)
    shifted = image.affine.copy()
    shifted[0, 3] += 0.5
    _save(flair, data, shifted)
    with pytest.raises(DataError, match=r"flair\.nii\.gz: affine differs"):
        brats.load_case(case_copy)
    shifted[0, 3] = image.affine[0, 3] + 1e-5  # float noise is tolerated
    _save(flair, data, shifted)
    assert brats.load_case(case_copy).images[1].shape == SHAPE


@pytest.mark.parametrize("value,dtype", [(3, np.uint8), (7, np.int16), (-1, np.int16)])
def test_unexpected_label_values_and_no_misleading_hint(case_copy, value, dtype):
    """Issue 12, defect 7: a value no convention has (7, -1; 3 beside 4) is not blamed on the convention."""
    seg = case_copy.path("seg")
    image = nib.load(seg)
    data = np.asanyarray(image.dataobj).astype(dtype)
    data[0, 0, 0] = value
    _save(seg, data, image.affine)
    with pytest.raises(DataError, match=r"seg\.nii\.gz: unexpected label values.*no BraTS convention has them"):
        brats.load_case(case_copy)


def test_label_convention_hint_names_the_setting_and_can_be_forced(case_copy):
    """Issue 12, defect 7: the hint names the dataset's label_convention key (the workflow accepts it: test_cli)."""
    seg = case_copy.path("seg")
    image = nib.load(seg)
    relabelled = np.where(np.asanyarray(image.dataobj) == 4, 3, np.asanyarray(image.dataobj)).astype(np.uint8)
    _save(seg, relabelled, image.affine)
    with pytest.raises(DataError, match=r"set the dataset's label_convention to 'brats2023' "
                                        r"\(workflow config: datasets\.<name>\.label_convention\)"):
        brats.load_case(case_copy)
    assert set(np.unique(brats.load_case(case_copy, label_convention="brats2023").label)) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        brats.load_case(case_copy, label_convention="brats2020")


def test_non_integer_float_labels(case_copy):
    seg = case_copy.path("seg")
    image = nib.load(seg)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    _save(seg, data, image.affine)
    assert set(np.unique(brats.load_case(case_copy).label)) == {0, 1, 2, 4}  # integer-valued floats are fine
    data[1, 1, 1] = 0.5
    _save(seg, data, image.affine)
    with pytest.raises(DataError, match="non-integer"):
        brats.load_case(case_copy)


def test_nan_volume(case_copy):
    flair = case_copy.path("flair")
    image = nib.load(flair)
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    _save(flair, data, image.affine)
    with pytest.raises(DataError, match=r"flair\.nii\.gz: 1 voxels are NaN"):
        brats.load_case(case_copy)


@pytest.mark.parametrize("fill", [0, 250])
def test_constant_volume(case_copy, fill):
    flair = case_copy.path("flair")
    image = nib.load(flair)
    _save(flair, np.full(SHAPE, fill, np.int16), image.affine)
    volume = brats.load_case(case_copy)
    with pytest.raises(DataError, match=r"flair\.nii\.gz: constant intensity"):
        brats.slice_case(volume, (32, 32))


def test_case_at_reads_one_folder_without_its_siblings(phantom_root, tmp_path):
    case = brats.case_at(phantom_root / "Phantom_001")
    assert (case.case_id, case.naming) == ("Phantom_001", "brats2018")
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match=r"notes: not a BraTS case folder"):
        brats.case_at(tmp_path / "notes")
    with pytest.raises(DataError, match=r"nope: no such case folder"):
        brats.case_at(tmp_path / "nope")


def test_empty_root_and_stray_folders(tmp_path, phantom_root):
    with pytest.raises(DataError, match="no BraTS cases found"):
        brats.find_cases(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        brats.find_cases(tmp_path / "nope")
    shutil.copytree(phantom_root / "Phantom_001", tmp_path / "Phantom_001")
    (tmp_path / "notes").mkdir()
    with pytest.warns(UserWarning, match="notes: no BraTS files"):
        assert [c.case_id for c in brats.find_cases(tmp_path)] == ["Phantom_001"]


def test_normalisation_clips_brain_percentiles_to_unit_range(phantom_root):
    volume = brats.load_case(brats.find_cases(phantom_root)[0])
    mask = brats.brain_mask(volume.images)
    image = volume.images[0]
    lo, hi = np.percentile(image[mask].astype(np.float64), brats.PERCENTILES)
    assert brats.intensity_range(image, mask) == pytest.approx((lo, hi))  # histogram path = np.percentile
    out = brats.normalise_volume(image, mask)
    expected = np.clip((image - lo) / (hi - lo), 0, 1) * mask
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32 and out[~mask].max() == 0 and out.max() == 1
    assert 0.004 < np.mean(out[mask] == 1) < 0.01  # ~0.5 % of brain voxels clipped at the top


def test_negative_intensities_keep_background_zero():
    volume = np.zeros((6, 6, 4), np.float32)
    volume[1:5, 1:5] = np.linspace(-3, 3, 64).reshape(4, 4, 4)
    mask = volume != 0
    out = brats.normalise_volume(volume, mask)
    assert out[~mask].max() == 0 and out[mask].min() == 0 and out.max() == 1


@pytest.mark.parametrize("convention", ["brats2018", "brats2023"])
def test_label_mapping_round_trip(convention):
    values = np.array(brats.LABEL_VALUES[convention] * 3, np.uint8).reshape(3, 4)
    classes = brats.to_contiguous(values, convention)
    assert classes.tolist() == [[0, 1, 2, 3]] * 3
    np.testing.assert_array_equal(brats.from_contiguous(classes, convention), values)
    bad = values.copy()
    bad[0, 0] = 3 if convention == "brats2018" else 4
    with pytest.raises(DataError):
        brats.to_contiguous(bad, convention)
    with pytest.raises(DataError):
        brats.from_contiguous(np.array([4]), convention)


def test_keep_settings_select_slices():
    brain = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    tumour = np.array([0, 0, 0, 1, 1, 0, 0, 0, 0, 0], bool)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    assert brats.select_slices(brain, tumour, "brain", rng()).tolist() == list(range(1, 9))
    assert brats.select_slices(brain, tumour, "tumour", rng()).tolist() == [3, 4]
    half = brats.select_slices(brain, tumour, 1.5, rng())
    assert len(half) == 5 and {3, 4} <= set(half) and set(half) <= set(range(1, 9))
    np.testing.assert_array_equal(half, brats.select_slices(brain, tumour, 1.5, rng()))
    assert brats.select_slices(brain, tumour, 100, rng()).tolist() == list(range(1, 9))
    assert brats.select_slices(brain, tumour, 0, rng()).tolist() == [3, 4]
    for bad in ("all", -1, True, float("nan"), None):
        with pytest.raises(ValueError):
            brats.check_keep(bad)


@pytest.mark.parametrize("size", [(32, 24), (48, 56)])  # window inside the volume / larger than it (padding)
def test_slice_case_windows_match_normalised_volume(phantom_root, size):
    volume = brats.load_case(brats.find_cases(phantom_root)[0])
    sliced = brats.slice_case(volume, size, keep="brain")
    mask = brats.brain_mask(volume.images)
    xs, ys = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(mask.any(axis=(0, 2)))
    assert sliced.crop == ((xs[0] + xs[-1] + 1 - size[0]) // 2, (ys[0] + ys[-1] + 1 - size[1]) // 2)
    assert sliced.slice_index.tolist() == np.flatnonzero(mask.any(axis=(0, 1))).tolist()
    assert sliced.images.shape == (len(sliced.slice_index), 2, *size) and sliced.labels.shape == (len(sliced.slice_index), *size)
    x0, y0 = sliced.crop
    pad = max(0, -x0, -y0, x0 + size[0] - SHAPE[0], y0 + size[1] - SHAPE[1])
    for m, image in enumerate(volume.images):
        full = np.pad(brats.normalise_volume(image, mask), ((pad, pad), (pad, pad), (0, 0)))
        window = full[x0 + pad: x0 + pad + size[0], y0 + pad: y0 + pad + size[1], sliced.slice_index]
        np.testing.assert_allclose(sliced.images[:, m], np.moveaxis(window, 2, 0), atol=1e-6)
    labels = np.pad(brats.to_contiguous(volume.label), ((pad, pad), (pad, pad), (0, 0)))
    window = labels[x0 + pad: x0 + pad + size[0], y0 + pad: y0 + pad + size[1], sliced.slice_index]
    np.testing.assert_array_equal(sliced.labels, np.moveaxis(window, 2, 0))


def test_cover_brain_grows_the_window_to_the_whole_brain(phantom_root):
    volume = brats.load_case(brats.find_cases(phantom_root)[0])
    mask = brats.brain_mask(volume.images)
    small = brats.slice_case(volume, (16, 16))
    grown = brats.slice_case(volume, (16, 16), cover_brain=True)
    extent = [int(np.ptp(np.flatnonzero(mask.any(axis=a)))) + 1 for a in ((1, 2), (0, 2))]
    assert small.images.shape[-2:] == (16, 16) and grown.images.shape[-2:] == tuple(extent)
    x0, y0 = grown.crop
    inside = np.zeros_like(mask)
    inside[max(x0, 0):x0 + extent[0], max(y0, 0):y0 + extent[1]] = True
    assert not (mask & ~inside).any()  # every brain voxel lies in the grown window
    assert brats.slice_case(volume, (48, 56), cover_brain=True).images.shape[-2:] == (48, 56)  # never shrinks


def test_slice_case_tumour_keep_and_window_warning(phantom_root):
    volume = brats.load_case(brats.find_cases(phantom_root)[1])
    sliced = brats.slice_case(volume, (40, 44), keep="tumour")
    tumour_slices = np.flatnonzero(volume.label.any(axis=(0, 1)))
    assert sliced.slice_index.tolist() == tumour_slices.tolist()
    assert all(sliced.labels[k].any() for k in range(len(sliced.labels)))
    with pytest.warns(UserWarning, match="tumour voxels lie outside the 4x4 window"):
        brats.slice_case(volume, (4, 4))
