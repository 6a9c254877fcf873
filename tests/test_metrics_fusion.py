"""metrics.fusion: golden numbers of the reference codes, hand-computed cases, properties, inputs, I/O, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from metrics import cli, fusion
from metrics.fusion import CONVENTIONS, METRICS, fusion_metrics

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden"  # the reference outputs (see golden.json's "about"), vendored with the tests
TOL = {"fuse4seg": 1e-6, "vifb": 1e-6, "cddfuse": 1e-5}
GOLDEN_SECTION = {"fuse4seg": "canonical", "cddfuse": "cddfuse", "vifb": "vifb"}
# fuse4seg's SSIM is the mean of the two SSIMs: the canonical section stores it as SSIM_mean.
CANONICAL_KEY = {"SSIM": "SSIM_mean"}
VARIANTS = {  # fuse4seg variants and the canonical key holding their reference value
    "MI_bits": ("MI", {"mi_unit": "bits"}),
    "Qabf_equal_is_one": ("Qabf", {"qabf_equal": "one"}),
    "SSIM": ("SSIM", {"ssim_reduce": "sum"}),
}


def _golden() -> dict:
    return json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module", params=sorted(_golden()["triples"]))
def triple(request) -> tuple[str, dict, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    info = _golden()["triples"][request.param]
    arrays = []
    for key in "ABF":
        path = GOLDEN / f"{request.param}_{key}.npy"
        array = np.load(path)
        assert array.shape == tuple(info["shape"]) and array.dtype == np.uint8, path
        # golden.json hashes the array's bytes in C order (not the .npy file with its header)
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        assert digest == info["sha256"][key], f"{path} changed"
        arrays.append(array)
    return request.param, info, tuple(arrays)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_golden_values_of_every_metric(triple, convention):
    name, info, (a, b, f) = triple
    expected = info[GOLDEN_SECTION[convention]]
    got = fusion_metrics(a, b, f, convention)
    assert list(got) == list(METRICS)
    for metric, value in got.items():
        key = CANONICAL_KEY.get(metric, metric) if convention == "fuse4seg" else metric
        assert _rel(value, expected[key]) <= TOL[convention], (name, convention, metric, value, expected[key])


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_golden_values_of_the_fuse4seg_variants(triple, key):
    name, info, (a, b, f) = triple
    metric, changes = VARIANTS[key]
    variant = dataclasses.replace(CONVENTIONS["fuse4seg"], name=key, **changes)
    assert _rel(fusion_metrics(a, b, f, variant)[metric], info["canonical"][key]) <= 1e-6


def test_the_qabf_quirk_is_visible_on_the_edge_triple(triple):
    name, info, (a, b, f) = triple
    quirk, textbook = info["canonical"]["Qabf"], info["canonical"]["Qabf_equal_is_one"]
    textbook_conv = dataclasses.replace(CONVENTIONS["fuse4seg"], name="textbook", qabf_equal="one")
    assert math.isclose(fusion.qabf(a, b, f), quirk, rel_tol=1e-6)
    assert math.isclose(fusion.qabf(a, b, f, textbook_conv), textbook, rel_tol=1e-6)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_single_metric_functions_agree_with_fusion_metrics(triple, convention):
    _, _, (a, b, f) = triple
    together = fusion_metrics(a, b, f, convention)
    alone = {
        "EN": fusion.en(f, convention), "SD": fusion.sd(f, convention), "SF": fusion.sf(f, convention),
        "MI": fusion.mi(a, b, f, convention), "PSNR": fusion.psnr(a, b, f, convention),
        "Qabf": fusion.qabf(a, b, f, convention), "SSIM": fusion.ssim(a, b, f, convention),
    }
    for metric in METRICS:
        assert alone[metric] == pytest.approx(together[metric], rel=1e-12), metric


# ------------------------------------------------------------------------------ hand-computed


def test_entropy_of_equal_level_counts():
    assert fusion.en(np.array([[0, 255], [0, 255]], np.uint8)) == pytest.approx(1.0, abs=1e-15)
    assert fusion.en(np.array([[0, 1], [2, 3]], np.uint8)) == pytest.approx(2.0, abs=1e-15)
    assert fusion.en(np.full((5, 7), 42, np.uint8)) == 0.0


def test_sd_and_sf_by_hand():
    f = np.array([[0, 10], [20, 30]], np.uint8)
    assert fusion.sd(np.array([[0, 255], [0, 255]], np.uint8)) == 127.5
    # rows: (10-0)^2 and (30-20)^2 over H(W-1) = 2 -> 100; columns: 20^2, 20^2 over (H-1)W = 2 -> 400
    assert fusion.sf(f) == pytest.approx(math.sqrt(500))
    assert fusion.sf(f, "vifb") == pytest.approx(math.sqrt((200 + 800) / 4))


def test_psnr_by_hand_under_each_convention():
    a = b = np.zeros((4, 8), np.uint8)
    f = np.full((4, 8), 10, np.uint8)
    assert fusion.psnr(a, b, f) == pytest.approx(10 * math.log10(255**2 / 100))
    assert fusion.psnr(a, b, f, "cddfuse") == pytest.approx(0.0, abs=1e-6)  # peak max(F) = 10, MSE 100
    vifb_mse = math.sqrt(100 * 32) / 32  # VIFB's "MSE": sqrt(sum of squares) / (H W)
    assert fusion.psnr(a, b, f, "vifb") == pytest.approx(20 * math.log10(255 / math.sqrt(vifb_mse)))


def test_mi_of_a_copy_and_of_a_constant():
    f = np.tile(np.array([[0, 200]], np.uint8), (6, 3))
    const = np.full_like(f, 7)
    assert fusion.mi(f, const, f) == pytest.approx(math.log(2))  # MI(F,F) = H(F) = ln 2; MI(const,F) = 0
    bits = dataclasses.replace(CONVENTIONS["fuse4seg"], name="bits", mi_unit="bits")
    assert fusion.mi(f, const, f, bits) == pytest.approx(1.0)


def test_qabf_of_identical_images_by_hand():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (16, 16)).astype(np.uint8)
    sigmoid_g = 0.9994 / (1 + math.exp(-15 * (1 - 0.5)))  # G = 1: equal strengths
    sigmoid_a = 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))  # A = 1: equal orientations
    textbook = dataclasses.replace(CONVENTIONS["fuse4seg"], name="textbook", qabf_equal="one")
    assert fusion.qabf(x, x, x, textbook) == pytest.approx(sigmoid_g * sigmoid_a, rel=1e-12)
    # The references' quirk uses G = gF >= 1 there instead of 1: still close to the maximum, not equal.
    assert fusion.qabf(x, x, x) != pytest.approx(sigmoid_g * sigmoid_a, rel=1e-9)


@pytest.mark.parametrize("shape", [(11, 11), (11, 40), (37, 11), (70, 29)])
def test_ssim_matches_scikit_image_on_any_shape(shape):
    from skimage.metrics import structural_similarity

    a, b, f = (np.random.default_rng(sum(shape) + k).integers(0, 256, shape).astype(np.uint8) for k in range(3))
    kw = dict(data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    expected = [structural_similarity(x.astype(float), f.astype(float), **kw) for x in (a, b)]
    assert fusion.ssim(a, b, f) == pytest.approx(sum(expected) / 2, rel=1e-12, abs=1e-14)


def test_ssim_of_constants_by_hand():
    a, f = np.full((12, 12), 100, np.uint8), np.full((12, 12), 50, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 50 + c1) / (100**2 + 50**2 + c1)  # the contrast-structure term is C2 / C2
    assert fusion.ssim(a, a, f) == pytest.approx(expected, rel=1e-12)
    assert fusion.ssim(f, f, f) == pytest.approx(1.0, rel=1e-14)


# ---------------------------------------------------------------------------------- properties


def _random_triple(seed=0, shape=(40, 56)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, shape)
    a = np.clip(base + rng.integers(-30, 30, shape), 0, 255).astype(np.uint8)
    b = np.clip(255 - base + rng.integers(-30, 30, shape), 0, 255).astype(np.uint8)
    f = ((a.astype(int) + b) // 2).astype(np.uint8)
    return a, b, f


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_sources_are_interchangeable(convention):
    a, b, f = _random_triple()
    ab, ba = fusion_metrics(a, b, f, convention), fusion_metrics(b, a, f, convention)
    for metric in METRICS:
        assert ab[metric] == pytest.approx(ba[metric], rel=1e-10), metric


def test_rotating_all_three_images_by_180_degrees_changes_nothing():
    a, b, f = _random_triple(3)
    plain, turned = fusion_metrics(a, b, f), fusion_metrics(*(np.rot90(x, 2) for x in (a, b, f)))
    for metric in METRICS:
        assert turned[metric] == pytest.approx(plain[metric], rel=1e-10), metric


@pytest.mark.parametrize("flip", [np.fliplr, np.flipud])
def test_mirroring_changes_only_qabf(flip):
    # The references' orientation is pi/2 wherever gx == 0, whatever the sign of gy: not mirror-symmetric.
    a, b, f = _random_triple(3)
    plain, mirrored = fusion_metrics(a, b, f), fusion_metrics(flip(a), flip(b), flip(f))
    for metric in METRICS:
        if metric != "Qabf":
            assert mirrored[metric] == pytest.approx(plain[metric], rel=1e-10), metric
    assert mirrored["Qabf"] != pytest.approx(plain["Qabf"], rel=1e-6)


def test_fused_equal_to_both_sources_is_perfect():
    a = _random_triple(4)[0]
    scores = fusion_metrics(a, a, a)
    assert scores["PSNR"] == math.inf  # documented: MSE 0
    assert scores["SSIM"] == pytest.approx(1.0, rel=1e-12)
    assert fusion_metrics(a, a, a, "vifb")["SSIM"] == pytest.approx(2.0, rel=1e-12)  # a sum of two
    assert scores["MI"] == pytest.approx(2 * math.log(2) * fusion.en(a))  # 2 H(A), H in nats
    assert scores["Qabf"] > 0.97


def test_fused_equal_to_one_source():
    a, b, _ = _random_triple(5)
    half_mse = np.mean((a.astype(float) - b) ** 2) / 2
    assert fusion.psnr(a, b, a) == pytest.approx(10 * math.log10(255**2 / half_mse))


def test_float_inputs_map_to_gray_levels():
    a, b, f = _random_triple(6)
    ref = fusion_metrics(a, b, f)
    unit = fusion_metrics(a / 255.0, (b / 255.0).astype(np.float32), f / 255.0)
    scale255 = fusion_metrics(a.astype(float), b.astype(float), f.astype(np.float32))
    wide_int = fusion_metrics(a.astype(np.int64), b.astype(np.uint16), f.astype(np.int32))
    for metric in METRICS:
        assert unit[metric] == pytest.approx(ref[metric], rel=1e-9), metric
        assert scale255[metric] == ref[metric], metric
        assert wide_int[metric] == ref[metric], metric


def test_compiled_exp_and_arctan_within_one_ulp_of_numpy():
    # Qabf's own vectorised exp and arctan (metrics/_fast.py) over the ranges it feeds them, and beyond.
    from metrics import _fast

    x = np.concatenate([np.linspace(-40, 40, 200_001), [-700.0, -1e-300, 0.0, 1e-300, 700.0]])
    got = x.copy()
    _fast._exp_inplace(got, np.empty_like(got))
    assert np.all(np.abs(got - np.exp(x)) <= np.spacing(np.exp(x)))
    t = np.concatenate([np.linspace(0, 5, 200_001), np.geomspace(1e-300, 1e300, 10_001),
                        [0.66, 2.414213562373095, np.inf]])
    got = np.array([_fast._atan_nonneg(v) for v in t])
    assert np.all(np.abs(got - np.arctan(t)) <= np.spacing(np.arctan(t)))


def test_scratch_arrays_are_safe_across_shapes():
    small, large = _random_triple(7, (20, 30)), _random_triple(8, (33, 47))
    first = fusion_metrics(*small)
    fusion_metrics(*large)
    assert fusion_metrics(*small) == first


def test_degenerate_images_give_documented_values_without_warnings():
    flat = np.full((16, 16), 80, np.uint8)
    black = np.zeros((16, 16), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat_scores = fusion_metrics(flat, flat, black)
        edgeless = fusion_metrics(black, black, flat)
        cdd = fusion_metrics(flat, flat, black, "cddfuse")
        same = fusion_metrics(black, black, black, "cddfuse")
    assert flat_scores["EN"] == 0.0 and flat_scores["SD"] == 0.0 and flat_scores["SF"] == 0.0
    assert flat_scores["MI"] == 0.0
    assert 0 < flat_scores["SSIM"] < 1
    # zero padding gives a constant non-zero image edges along its border, which F = 0 does not keep
    assert 0 < flat_scores["Qabf"] < 0.01
    assert math.isnan(edgeless["Qabf"])  # no source gradient anywhere: 0 / 0
    assert cdd["PSNR"] == -math.inf  # CDDFuse's peak max(F) is 0
    assert same["PSNR"] == math.inf


# ------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("bad, message", [
    (np.zeros((12, 12, 3), np.uint8), "F: expected a 2-D gray image, got shape (12, 12, 3); colour?"),
    (np.zeros(12, np.uint8), "F: expected a 2-D gray image"),
    (np.zeros((12, 12), bool), "F: unsupported dtype bool"),
    (np.zeros((12, 12), complex), "F: unsupported dtype complex128"),
    (np.full((12, 12), np.nan), "F: contains NaN"),
    (np.full((12, 12), -0.5), "F: negative values"),
    (np.full((12, 12), 300.0), "F: values above 255"),
    (np.full((12, 12), 256, np.int32), "F: integer gray levels must lie in 0..255"),
])
def test_bad_images_are_rejected_naming_the_image(bad, message):
    good = np.zeros((12, 12), np.uint8)
    with pytest.raises(ValueError) as err:
        fusion_metrics(good, good, bad)
    assert message in str(err.value)


def test_images_smaller_than_the_ssim_window_are_rejected():
    small = np.zeros((12, 8), np.uint8)
    with pytest.raises(ValueError, match=r"images of shape \(12, 8\) smaller than the 11x11"):
        fusion_metrics(small, small, small)
    with pytest.raises(ValueError, match=r"F: image of shape \(1, 5\) smaller than the 2x2"):
        fusion.sf(np.zeros((1, 5)))
    assert fusion.ssim(small, small, small, "cddfuse") == pytest.approx(2.0)  # its 7x7 window fits


def test_shape_mismatch_and_conventions_are_checked():
    a = np.zeros((12, 12), np.uint8)
    with pytest.raises(ValueError, match=r"shape mismatch: A \(12, 12\), B \(12, 13\)"):
        fusion_metrics(a, np.zeros((12, 13), np.uint8), a)
    with pytest.raises(ValueError, match="unknown fusion metric convention 'matlab'"):
        fusion_metrics(a, a, a, "matlab")
    with pytest.raises(ValueError, match="psnr_peak"):
        fusion.Convention("odd", psnr_peak="max")


def test_to_gray_y_matches_pil_and_the_bt601_formula():
    rng = np.random.default_rng(9)
    rgb = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
    pil_y = np.asarray(Image.fromarray(rgb, "RGB").convert("YCbCr"))[..., 0]
    assert np.array_equal(fusion.to_gray_y(rgb), pil_y)
    gray = np.repeat(rgb[..., :1], 3, axis=2)  # PIL's fixed-point Y of (v, v, v) may be v - 1
    assert np.abs(fusion.to_gray_y(gray).astype(int) - gray[..., 0]).max() <= 1
    formula = rgb.astype(float) @ [0.299, 0.587, 0.114]
    assert np.allclose(fusion.to_gray_y(rgb / 255.0), formula)
    assert np.abs(pil_y - formula).max() <= 1
    with pytest.raises(ValueError, match="colour image"):
        fusion.to_gray_y(rgb[..., 0])


# ------------------------------------------------------------------------------ batch and files


def test_score_stack_rows_and_names():
    triples = [_random_triple(s, (24, 24)) for s in range(3)]
    a, b, f = (np.stack(x) for x in zip(*triples))
    table = fusion.score_stack(a, b, f, "vifb")
    assert list(table.columns) == list(METRICS) and len(table) == 3
    assert table.iloc[1].to_dict() == pytest.approx(fusion_metrics(*triples[1], "vifb"))
    named = fusion.score_stack(a, b, f, names=["x", "y", "z"])
    assert list(named.columns) == ["name", *METRICS] and list(named["name"]) == ["x", "y", "z"]
    f_bad = f.astype(float)
    f_bad[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="image z: F: contains NaN"):
        fusion.score_stack(a, b, f_bad, names=["x", "y", "z"])
    with pytest.raises(ValueError, match=r"\(N, H, W\) stack"):
        fusion.score_stack(a[0], b[0], f[0])


def _write_folders(root: Path, n: int = 3) -> tuple[Path, Path, Path, list]:
    dirs = [root / d for d in ("mri", "spect", "fused")]
    for d in dirs:
        d.mkdir()
    triples = []
    for i in range(n):
        a, _, _ = _random_triple(10 + i, (24, 20))
        rgb = np.random.default_rng(i).integers(0, 256, (24, 20, 3)).astype(np.uint8)
        b = fusion.to_gray_y(rgb)
        f = ((a.astype(int) + b) // 2).astype(np.uint8)
        Image.fromarray(a).save(dirs[0] / f"case{i}.png")
        Image.fromarray(rgb).save(dirs[1] / f"case{i}.tif")
        Image.fromarray(f).save(dirs[2] / f"case{i}.png")
        triples.append((a, b, f))
    Image.fromarray(a).save(dirs[0] / "training_only.png")  # sources may hold more than the fused folder
    return *dirs, triples


def test_score_folder_matches_names_and_reads_colour_as_y(tmp_path):
    a_dir, b_dir, f_dir, triples = _write_folders(tmp_path)
    table = fusion.score_folder(a_dir, b_dir, f_dir, "cddfuse")
    assert list(table.columns) == ["name", *METRICS]
    assert list(table["name"]) == ["case0", "case1", "case2"]
    for row, t in zip(table.itertuples(index=False), triples):
        assert row._asdict() == pytest.approx({"name": row.name, **fusion_metrics(*t, "cddfuse")})


def test_score_folder_names_the_missing_or_mismatched_file(tmp_path):
    a_dir, b_dir, f_dir, _ = _write_folders(tmp_path)
    (b_dir / "case1.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"case1.png: no source image named 'case1' in .*spect"):
        fusion.score_folder(a_dir, b_dir, f_dir)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(b_dir / "case1.png")
    with pytest.raises(ValueError, match=r"case1: sizes differ: .*case1.png \(10, 10\)"):
        fusion.score_folder(a_dir, b_dir, f_dir)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(f_dir / "case1.jpg")
    with pytest.raises(ValueError, match="two images named 'case1'"):
        fusion.score_folder(a_dir, b_dir, f_dir)


# --------------------------------------------------------------------------------------- CLI


def test_cli_writes_csv_and_sidecar_atomically(tmp_path, capsys):
    a_dir, b_dir, f_dir, _ = _write_folders(tmp_path)
    out = tmp_path / "scores" / "fusion.csv"
    assert cli.main(["fusion", "--a", str(a_dir), "--b", str(b_dir), "--fused", str(f_dir),
                     "--convention", "vifb", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    expected = fusion.score_folder(a_dir, b_dir, f_dir, "vifb")
    assert list(table.columns) == ["name", *METRICS]
    assert np.allclose(table[list(METRICS)].to_numpy(), expected[list(METRICS)].to_numpy(), rtol=1e-15)
    assert json.loads(out.with_suffix(".json").read_text())["convention"] == "vifb"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fusion.csv", "fusion.json"]  # no temp files left
    printed = capsys.readouterr().out
    assert "3 images, convention vifb" in printed and f"SSIM {expected['SSIM'].mean():.4f}" in printed


def test_cli_reports_errors_and_registers_on_a_parent_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["fusion", "--a", str(tmp_path / "nope"), "--b", str(tmp_path), "--fused", str(tmp_path),
                  "--out", str(tmp_path / "x.csv")])
    assert stop.value.code == 2
    assert re.match(r"error: metrics fusion: .*nope: no such folder$", capsys.readouterr().err)
    parent = argparse.ArgumentParser()
    cli.add_parser(parent.add_subparsers(dest="command"))
    args = parent.parse_args(["metrics", "fusion", "--a", "A", "--b", "B", "--fused", "F", "--out", "o.csv"])
    assert args.command == "metrics" and args.convention == "fuse4seg" and args.func is not None
