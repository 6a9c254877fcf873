"""Paired readers (Harvard, GFP-PC) on synthetic phantoms: channels, chroma, grouping, mismatches, bad files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import DataError
from benchmark.data.paired import find_pairs, load_paired, read_image
from benchmark.data.synthetic import write_paired_phantoms


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("paired")
    return {pair: write_paired_phantoms(root / pair, pair, n_studies=3, slices_per_study=2, seed=5, size=32)
            for pair in ("PET", "SPECT", "CT", "GFP")}


@pytest.fixture
def copy_of(phantoms, tmp_path):
    def copy(pair: str) -> Path:
        return Path(shutil.copytree(phantoms[pair], tmp_path / pair))
    return copy


@pytest.mark.parametrize("pair", ["PET", "SPECT"])
def test_colour_functional_gives_y_and_chroma(phantoms, pair):
    data = load_paired(phantoms[pair])
    assert data.modalities == ("MRI", pair) and data.images.shape == (6, 2, 32, 32) and data.chroma.shape == (6, 2, 32, 32)
    assert data.names == ["1001", "1002", "2001", "2002", "3001", "3002"]
    assert data.patients == ["01", "01", "02", "02", "03", "03"]
    mri = np.asarray(Image.open(phantoms[pair] / "MRI" / "2002.png"))
    ycc = np.asarray(Image.open(phantoms[pair] / pair / "2002.png").convert("YCbCr"))
    np.testing.assert_array_equal(data.images[3, 0], mri / np.float32(255))
    np.testing.assert_array_equal(data.images[3, 1], ycc[..., 0] / np.float32(255))
    np.testing.assert_array_equal(data.chroma[3], np.moveaxis(ycc[..., 1:], -1, 0) / np.float32(255))
    assert data.images.dtype == data.chroma.dtype == np.float32


def test_gray_ct_is_used_as_is(phantoms):
    data = load_paired(phantoms["CT"], functional="CT")
    assert data.chroma is None and data.modalities == ("MRI", "CT")
    np.testing.assert_array_equal(data.images[0, 1], np.asarray(Image.open(phantoms["CT"] / "CT" / "1001.png")) / np.float32(255))


def test_gfp_layout_grouping_and_phase_contrast_luminance(phantoms):
    modalities, items = find_pairs(phantoms["GFP"])
    assert modalities == ("PC", "GFP")
    assert [(i.name, i.patient) for i in items[:3]] == [("02-A01", "02-A"), ("02-A02", "02-A"), ("02-B01", "02-B")]
    data = load_paired(phantoms["GFP"], anatomical="PC", functional="GFP")
    pc = np.asarray(Image.open(items[0].anatomical))
    assert pc.ndim == 3  # gray stored as RGB, like the real PCI files
    expected = np.asarray(Image.open(items[0].anatomical).convert("YCbCr"))[..., 0] / np.float32(255)
    np.testing.assert_array_equal(data.images[0, 0], expected)
    assert data.chroma is not None and data.chroma[:, 1].mean() < 0.5  # green: Cr below neutral


def test_one_and_two_digit_study_ids_are_distinct(tmp_path):
    for folder in ("MRI", "PET"):
        (tmp_path / folder).mkdir()
        for name in ("2004", "20005", "2010"):
            mode = "L" if folder == "MRI" else "RGB"
            Image.new(mode, (8, 8)).save(tmp_path / folder / f"{name}.png")
    _, items = find_pairs(tmp_path)
    assert {i.name: i.patient for i in items} == {"2004": "02", "2010": "02", "20005": "20"}


def test_size_mismatch_is_skipped_with_warning_or_rejected(copy_of):
    root = copy_of("GFP")
    Image.new("RGB", (40, 40)).save(root / "GFP" / "02-A01-g.jpg")
    with pytest.warns(UserWarning, match=r"02-A01-t\.jpg is 32x32 but .*02-A01-g\.jpg is 40x40.*skipped"):
        data = load_paired(root)
    assert "02-A01" not in data.names and len(data.names) == 5
    with pytest.raises(DataError, match=r"size mismatch in pair 02-A01"):
        load_paired(root, on_mismatch="error")
    with pytest.warns(UserWarning):  # an explicit size does not rescue a mismatched pair: it is never resized
        assert "02-A01" not in load_paired(root, size=32).names
    with pytest.raises(ValueError):
        load_paired(root, on_mismatch="resize")


@pytest.mark.parametrize("pair,target,source,found", [
    ("SPECT", "MRI/2001.png", "SPECT/2001.png", "colour image in the anatomical folder"),  # swapped files
    ("SPECT", "SPECT/2001.png", "MRI/2001.png", "gray image in the SPECT folder, which holds colour"),
    ("GFP", "GFP/02-B01-g.jpg", "PCI/02-B01-t.jpg", "gray image in the GFP folder"),  # gray stored as RGB
    ("CT", "CT/2001.png", "../SPECT/SPECT/2001.png", "colour image in the CT folder, which holds gray"),
])
def test_wrong_colour_kind_is_skipped_with_warning_or_rejected(copy_of, phantoms, pair, target, source, found):
    """Issue 12, defect 9: a colour anatomical image or a gray image in a colour functional folder was accepted."""
    root = copy_of(pair)
    shutil.copy(phantoms[pair] / source, root / target)
    name = Path(target).stem.removesuffix("-g")
    with pytest.warns(UserWarning, match=rf"{Path(target).name}: a {found}.*skipped"):
        data = load_paired(root)
    assert name not in data.names and len(data.names) == 5
    with pytest.raises(DataError, match=found):
        load_paired(root, on_mismatch="error")


def test_missing_counterpart(copy_of):
    root = copy_of("PET")
    (root / "PET" / "3002.png").unlink()
    with pytest.warns(UserWarning, match=r"MRI/3002\.png: has no counterpart"):
        assert load_paired(root).names[-1] == "3001"
    with pytest.raises(DataError, match="no counterpart"):
        load_paired(root, on_mismatch="error")


def test_explicit_size_crops_or_pads_centrally(phantoms):
    data = load_paired(phantoms["PET"], size=(24, 40))
    assert data.images.shape == (6, 2, 24, 40) and data.chroma.shape == (6, 2, 24, 40)
    full = load_paired(phantoms["PET"])
    np.testing.assert_array_equal(data.images[:, :, :, 4:36], full.images[:, :, 4:28, :])
    assert data.images[:, :, :, :4].max() == 0 and np.all(data.chroma[:, :, :, :4] == np.float32(128 / 255))


def test_pairs_of_several_sizes_need_an_explicit_size(copy_of):
    root = copy_of("CT")
    Image.new("L", (20, 20)).save(root / "MRI" / "1001.png")
    Image.new("L", (20, 20)).save(root / "CT" / "1001.png")
    with pytest.raises(DataError, match="several sizes.*set size"):
        load_paired(root)
    assert load_paired(root, size=32).images.shape[-2:] == (32, 32)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("pair,file", [("PET", "PET/2001.png"), ("GFP", "GFP/02-B02-g.jpg")])
def test_corrupt_images_name_the_file(copy_of, pair, file, damage):
    path = copy_of(pair) / file
    raw = path.read_bytes()
    path.write_bytes(b"\x00garbage" * 50 if damage == "garbage" else raw[: len(raw) // 2])
    with pytest.raises(DataError, match=rf"{Path(file).name}: cannot decode image"):
        load_paired(path.parent.parent)


def test_layout_errors(tmp_path, copy_of):
    with pytest.raises(DataError, match="does not exist"):
        load_paired(tmp_path / "nowhere")
    (tmp_path / "empty" / "MRI").mkdir(parents=True)
    (tmp_path / "empty" / "SPECT").mkdir()
    with pytest.raises(DataError, match="no usable image pairs"):
        load_paired(tmp_path / "empty")
    (tmp_path / "empty" / "PET").mkdir()
    with pytest.raises(DataError, match="exactly one functional sub-folder"):
        load_paired(tmp_path / "empty")
    with pytest.raises(DataError, match="MRI/MRI: sub-folder missing"):
        load_paired(tmp_path / "empty" / "MRI", functional="PET")
    root = copy_of("SPECT")
    for folder in ("MRI", "SPECT"):
        shutil.copy(root / folder / "1001.png", root / folder / "brain_a.png")
    with pytest.raises(DataError, match=r"brain_a\.png: name is not <study><3-digit slice>"):
        load_paired(root)
    (root / "MRI" / "Thumbs.db").write_bytes(b"x")  # non-image files are ignored
    with pytest.raises(ValueError):
        load_paired(root, functional="MRI")


def test_read_image_modes(tmp_path):
    Image.new("P", (4, 4)).save(tmp_path / "p.png")
    Image.new("LA", (4, 4)).save(tmp_path / "la.png")
    Image.new("I;16", (4, 4)).save(tmp_path / "deep.png")
    assert read_image(tmp_path / "p.png").shape == (4, 4, 3) and read_image(tmp_path / "la.png").shape == (4, 4)
    with pytest.raises(DataError, match="unsupported image mode"):
        read_image(tmp_path / "deep.png")
