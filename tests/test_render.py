"""Tests of benchmark.render: tables, the paper comparison and figures.

Every score, log and image below is a FABRICATED FIXTURE written into tmp_path to exercise the renderer;
none of it is a measurement of any method.
"""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from pathlib import Path

from benchmark.methods import MethodInfo
from benchmark.record import FollowerConfig, RunConfig, pipeline_of
from benchmark.render import collect_runs as _collect_runs
from benchmark.render import render_all as _render_all
from benchmark.render.figures import render_figures
from benchmark.render.tables import paper_table, render_tables
from metrics.stats import bootstrap_ci, paired_wilcoxon

SEG_COLS = ["NCR_dice", "NCR_iou", "ED_dice", "ED_iou", "ET_dice", "ET_iou", "mean_dice", "mean_iou"]
FUSION_COLS = ["EN", "SD", "MI", "PSNR", "SF", "Qabf", "SSIM"]
PATIENTS = ["001", "002", "003", "004"]
SEG_SETTINGS = {"aggregation": "patient", "empty_rule": "nan", "label_convention": "brats2023"}

# Fabricated per-patient mean Dice, per run and seed (fixtures, not measurements).
MEAN_DICE = {
    "fuse4seg": {0: [0.90, 0.80, 0.85, 0.95], 1: [0.94, 0.84, 0.87, 0.97]},
    "fuse4seg-baseline": {0: [0.70, 0.60, 0.65, 0.75], 1: [0.72, 0.62, 0.61, 0.77]},
    "cddfuse": {0: [0.80, 0.70, 0.78, 0.82], 1: [0.82, 0.74, 0.76, 0.80]},
    "average": {0: [0.60, 0.50, 0.55, 0.65], 1: [0.62, 0.52, 0.57, 0.61]},
}
# Fabricated per-image EN on harvard_mri_spect (fixture).
EN = {"fuse4seg": {0: [7.0, 7.2, 7.4], 1: [7.3, 7.5, 7.7]}, "cddfuse": {0: [6.9, 7.0, 7.1], 1: [6.8, 7.0, 7.2]}}

# Fixture method declarations (display fields come from the method, never from the run folder).
METHODS = {
    "fuse4seg": MethodInfo("fuse4seg", Path("fuse4seg.py"), "joint", "Fuse4Seg", "Fuse4Seg (Ours)",
                           ablations={"baseline": {"label": "Baseline (Disjoint)", "order": 0}},
                           full_label="Ours (Full)"),
    "cddfuse": MethodInfo("cddfuse", Path("cddfuse.py"), "fusion", "CDDFuse", "CDDFuse"),
    "average": MethodInfo("average", Path("average.py"), "fusion", "Average"),
    "nnunet": MethodInfo("nnunet", Path("nnunet.py"), "multichannel", "nnU-Net 2D", "nnU-Net"),
}
CONTEXT = {"datasets": {"brats": {"kind": "brats", "pair": None},
                        "harvard_mri_spect": {"kind": "paired", "pair": "MRI-SPECT"}}}


def collect_runs(dirs):
    return _collect_runs(dirs, CONTEXT, methods=METHODS)


def render_all(dirs, out, **kwargs):
    return _render_all(dirs, out, context=CONTEXT, methods=METHODS, **kwargs)


def _disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _brats_examples(shift: int) -> dict:
    """Fixture slices: a smooth head with a three-class tumour; predictions are the truth shifted by `shift`."""
    size, names = 32, ["BraTS-001_z40", "BraTS-002_z51"]
    head = _disk(size, 16, 16, 13).astype(np.float32)
    label = np.zeros((size, size), np.int64)
    label[_disk(size, 14, 17, 8)] = 2
    label[_disk(size, 14, 17, 5)] = 3
    label[_disk(size, 14, 17, 3)] = 1
    t1ce = 0.4 * head + 0.5 * (label == 3)
    flair = 0.3 * head + 0.6 * (label >= 2)
    sources = np.stack([np.stack([t1ce, flair])] * len(names)).astype(np.float32)
    return {"sources": sources, "fused": sources.mean(axis=1) + 0.1 * (label > 0),
            "label": np.stack([label] * len(names)), "prediction": np.stack([np.roll(label, shift, axis=1)] * 2),
            "name": np.array(names)}


def _paired_examples(scale: float) -> dict:
    size, names = 32, ["mri_spect_01", "mri_spect_02"]
    yy, xx = np.mgrid[:size, :size] / size
    mri = (0.5 + 0.5 * np.sin(6 * xx) * np.cos(4 * yy)) * _disk(size, 16, 16, 14)
    spect = np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) * 12)
    chroma = np.stack([0.5 - 0.2 * spect, 0.5 + 0.3 * spect])
    fused = np.clip(scale * np.maximum(mri, spect), 0, 1)
    return {"sources": np.stack([np.stack([mri, spect])] * 2).astype(np.float32),
            "chroma": np.stack([chroma] * 2).astype(np.float32), "fused": np.stack([fused] * 2).astype(np.float32),
            "fused_rgb": np.stack([np.clip(np.stack([fused * 1.1, fused, fused * 0.8], -1), 0, 1)] * 2),
            "name": np.array(names)}


def _write_run(root, dataset, run, seed, *, seg=None, seg_settings=SEG_SETTINGS, fusion=None, log=None,
               examples=None, pair=None):
    directory = root / dataset / run / f"seed{seed}"
    directory.mkdir(parents=True)
    method, _, variant = run.partition("-")
    kind, dataset_kind = METHODS[method].kind, "paired" if pair else "brats"
    pipeline = pipeline_of(kind, dataset_kind, bilevel=variant != "baseline")
    RunConfig(dataset=dataset, dataset_kind=dataset_kind, method=method, kind=kind, variant=variant or None,
              seed=seed, pipeline=pipeline, hparams={}, training={}, data={},
              follower=FollowerConfig({}, {}) if pipeline == "joint" else None).write(directory / "config.json")
    if seg is not None:
        seg.to_csv(directory / "seg_scores.csv", index=False)
        (directory / "seg_scores.json").write_text(json.dumps(seg_settings))
    if fusion is not None:
        fusion.to_csv(directory / "fusion_scores.csv", index=False)
        (directory / "fusion_scores.json").write_text(json.dumps({"convention": "fuse4seg"}))
    if log is not None:
        log.to_csv(directory / "train_log.csv", index=False)
    if examples is not None:
        np.savez(directory / "examples.npz", **examples)
    return directory


def _seg_frame(mean_dice: list[float]) -> pd.DataFrame:
    """Fixture per-patient scores: every column derived from the fabricated mean Dice."""
    d = np.asarray(mean_dice)
    frame = pd.DataFrame({"patient": PATIENTS})
    for k, col in enumerate(SEG_COLS):
        frame[col] = d if col == "mean_dice" else np.clip(d - 0.01 * k, 0, 1)
    frame["ET_hd95"] = 3.0
    return frame


def _log(seed: int, stages: list[str]) -> pd.DataFrame:
    epochs = np.arange(len(stages))
    return pd.DataFrame({"epoch": epochs, "stage": stages, "seg_loss": 1.0 / (1 + epochs) + 0.01 * seed,
                         "fusion_loss": 0.5 * np.exp(-0.2 * epochs) + 0.02, "lr": 1e-3, "seconds": 1.5})


def _build_tree(root):
    """Fabricated results tree: 4 BraTS runs with scores, one failed run (no seg_scores.csv), one paired dataset."""
    dirs = []
    for run in ("fuse4seg", "fuse4seg-baseline", "cddfuse", "average", "nnunet"):
        for seed in (0, 1):
            seg = _seg_frame(MEAN_DICE[run][seed]) if run in MEAN_DICE else None
            stages = ["warmup"] * 3 + ["bilevel"] * 4 if run.startswith("fuse4seg") else ["fusion"] * 3 + [
                "segmentation"] * 4
            dirs.append(_write_run(root, "brats", run, seed, seg=seg, log=_log(seed, stages),
                                   examples=None if run == "nnunet" else _brats_examples(seed + len(run) % 3)))
    for run in ("fuse4seg", "cddfuse"):
        for seed in (0, 1):
            fusion = pd.DataFrame({"name": ["mri_spect_01", "mri_spect_02", "mri_spect_03"]})
            for k, col in enumerate(FUSION_COLS):
                fusion[col] = np.asarray(EN[run][seed]) + k
            dirs.append(_write_run(root, "harvard_mri_spect", run, seed, fusion=fusion, pair="MRI-SPECT",
                                   log=_log(seed, ["fusion"] * 5), examples=_paired_examples(0.9 + 0.1 * seed)))
    return root, dirs


@pytest.fixture
def tree(tmp_path):
    return _build_tree(tmp_path / "results")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The fabricated tree rendered once for the read-only tests (figures take seconds)."""
    base = tmp_path_factory.mktemp("rendered")
    _, dirs = _build_tree(base / "results")
    out = base / "out"
    return out, render_all(dirs, out), dirs


def _csv(out, name):
    return pd.read_csv(out / "tables" / name, dtype={"paper_row": str})


def _cell(frame, **where):
    mask = np.ones(len(frame), bool)
    for key, value in where.items():
        mask &= frame[key].to_numpy() == value
    assert mask.sum() == 1, where
    return frame[mask].iloc[0]


def _md_row(text: str, first_cell: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if first_cell in cells[:2]:
            return cells
    raise AssertionError(f"no row {first_cell!r}")


def test_render_all_writes_every_table_and_figure_atomically(rendered):
    out, paths, _ = rendered
    names = {p.relative_to(out).as_posix() for p in paths}
    for stem in ("table1_segmentation", "table2_fusion", "table3_ablation"):
        assert {f"tables/{stem}.{ext}" for ext in ("csv", "md", "tex")} <= names
        assert {f"tables/{stem}_vs_paper.{ext}" for ext in ("csv", "md")} <= names
    for stem in ("overlays_brats", "interpretability_brats", "curves_brats", "fusion_grid_harvard_mri_spect",
                 "curves_harvard_mri_spect"):
        assert {f"figures/{stem}.png", f"figures/{stem}.pdf"} <= names
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == names  # nothing else, in particular no temporary files left behind


def test_table1_cells_match_hand_computation(rendered):
    out, _, _ = rendered
    t1 = _csv(out, "table1_segmentation.csv")
    assert set(t1["label"]) == {"Fuse4Seg", "CDDFuse + Seg", "Average + Seg", "nnU-Net 2D"}  # no variants
    row = _cell(t1, label="Fuse4Seg", metric="mean_dice")
    # seed means 0.875 and 0.905 -> mean 0.89, std |0.875 - 0.905| / sqrt(2)
    assert row["mean"] == pytest.approx(0.89)
    assert row["std"] == pytest.approx(0.03 / math.sqrt(2))
    assert (row["n_seeds"], row["n_patients"], row["group"], row["status"]) == (2, 4, "proposed", "ok")
    # the CI is over per-patient scores averaged over the seeds first
    pooled = np.mean([MEAN_DICE["fuse4seg"][0], MEAN_DICE["fuse4seg"][1]], axis=0)
    _, low, high = bootstrap_ci(pooled)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    assert _cell(t1, label="CDDFuse + Seg", metric="NCR_dice")["group"] == "disjoint"
    md = (out / "tables" / "table1_segmentation.md").read_text()
    assert _md_row(md, "Fuse4Seg")[2:10][6] == "0.890 ± 0.021"


def test_wilcoxon_against_reference(rendered):
    out, _, _ = rendered
    t1 = _csv(out, "table1_segmentation.csv")
    assert t1.loc[t1["label"] == "Fuse4Seg", "p_wilcoxon"].isna().all()
    row = _cell(t1, label="CDDFuse + Seg", metric="mean_dice")
    pooled = {r: np.mean([MEAN_DICE[r][0], MEAN_DICE[r][1]], axis=0) for r in ("cddfuse", "fuse4seg")}
    assert row["p_wilcoxon"] == pytest.approx(paired_wilcoxon(pooled["cddfuse"], pooled["fuse4seg"]))
    assert np.isfinite(row["p_wilcoxon"])
    assert row["reference"] == "fuse4seg"
    md = (out / "tables" / "table1_segmentation.md").read_text()
    headers = _md_row(md, "Group")
    p_col = headers.index("p (Mean Dice)")
    assert _md_row(md, "Fuse4Seg")[p_col] == ""
    assert _md_row(md, "CDDFuse + Seg")[p_col] == f"{row['p_wilcoxon']:.2g}"


def test_reference_method_is_configurable(tree, tmp_path):
    records = collect_runs(tree[1])
    render_tables(records, tmp_path / "tables", reference="cddfuse")
    t1 = _csv(tmp_path, "table1_segmentation.csv")
    assert t1.loc[t1["label"] == "CDDFuse + Seg", "p_wilcoxon"].isna().all()
    assert np.isfinite(_cell(t1, label="Fuse4Seg", metric="mean_dice")["p_wilcoxon"])
    with pytest.raises(ValueError, match="nosuch"):
        render_all(tree[1], tmp_path / "o2", reference_method="nosuch")


def test_missing_scores_are_missing_in_every_format(rendered):
    out, _, _ = rendered
    t1 = _csv(out, "table1_segmentation.csv")
    missing = t1[t1["label"] == "nnU-Net 2D"]
    assert len(missing) == len(SEG_COLS)
    assert (missing["status"] == "missing").all()
    assert missing[["mean", "std", "ci_low", "ci_high", "p_wilcoxon"]].isna().all().all()
    assert (missing["n_seeds"] == 0).all()
    md_cells = _md_row((out / "tables" / "table1_segmentation.md").read_text(), "nnU-Net 2D")
    assert md_cells[2:12] == ["missing"] * 10  # 8 metrics, CI, p
    tex = (out / "tables" / "table1_segmentation.tex").read_text()
    tex_cells = next(cells for cells in ([c.strip() for c in line.rstrip("\\ ").split("&")] for line in
                                         tex.splitlines()) if cells[:2] == ["multichannel", "nnU-Net 2D"])
    assert tex_cells[2:12] == ["missing"] * 10
    vs = _csv(out, "table1_segmentation_vs_paper.csv")
    row = _cell(vs, label="nnU-Net 2D", metric="mean_dice")
    assert (row["paper_row"], row["status"], row["paper"]) == ("nnU-Net", "missing", 0.872)
    assert math.isnan(row["ours"]) and math.isnan(row["diff"])
    assert _md_row((out / "tables" / "table1_segmentation_vs_paper.md").read_text(), "nnU-Net 2D")[8] == "missing / 0.872"


def test_paper_comparison_lines_up_by_method_name(rendered):
    out, _, _ = rendered
    vs = _csv(out, "table1_segmentation_vs_paper.csv")
    paper = paper_table("table1_segmentation.csv").set_index("method")
    ours = _cell(vs, label="CDDFuse + Seg", metric="mean_dice")
    hand = np.mean([np.mean(MEAN_DICE["cddfuse"][0]), np.mean(MEAN_DICE["cddfuse"][1])])
    assert (ours["paper_row"], ours["ours"]) == ("CDDFuse + Seg", pytest.approx(hand))
    assert ours["paper"] == paper.loc["CDDFuse + Seg", "mean_dice"]
    assert ours["diff"] == pytest.approx(hand - paper.loc["CDDFuse + Seg", "mean_dice"])
    proposed = _cell(vs, label="Fuse4Seg", metric="mean_dice")
    assert (proposed["paper_row"], proposed["diff"]) == ("Fuse4Seg (Ours)", pytest.approx(0.89 - 0.910))
    average = _cell(vs, label="Average + Seg", metric="mean_dice")  # no paper row
    assert math.isnan(average["paper"]) and average["status"] == "no paper row"
    unreproduced = _cell(vs, label="DDFM + Seg", metric="NCR_dice")
    assert unreproduced["status"] == "missing" and math.isnan(unreproduced["ours"])
    per_metric = vs[vs["metric"] == "mean_dice"]
    assert sorted(per_metric["paper_row"].dropna()) == sorted(paper.index)  # every paper row, once
    md = (out / "tables" / "table1_segmentation_vs_paper.md").read_text()
    assert _md_row(md, "CDDFuse + Seg")[8] == f"{hand:.3f} / 0.820 ({hand - 0.820:+.3f})"
    assert _md_row(md, "DDFM + Seg")[2] == "missing / 0.765"


def test_table3_rows_follow_ablation_order(rendered):
    out, _, _ = rendered
    t3 = _csv(out, "table3_ablation.csv")
    assert list(dict.fromkeys(t3["label"])) == ["Baseline (Disjoint)", "Ours (Full)"]
    base = _cell(t3, label="Baseline (Disjoint)", metric="mean_dice")
    assert base["mean"] == pytest.approx(np.mean([0.675, 0.68]))
    assert np.isfinite(base["p_wilcoxon"])
    assert math.isnan(_cell(t3, label="Ours (Full)", metric="mean_dice")["p_wilcoxon"])
    vs = _csv(out, "table3_ablation_vs_paper.csv")
    assert _cell(vs, label="Baseline (Disjoint)", metric="mean_dice")["diff"] == pytest.approx(0.6775 - 0.820)
    assert _cell(vs, label="Variant A", metric="mean_dice")["status"] == "missing"


def test_table2_blocks_by_pair_and_paper(rendered):
    out, _, _ = rendered
    t2 = _csv(out, "table2_fusion.csv")
    assert set(t2["dataset"]) == {"harvard_mri_spect"}  # BraTS runs here saved no fusion scores
    row = _cell(t2, label="CDDFuse", metric="EN")
    assert row["mean"] == pytest.approx(7.0)  # seed means 7.0 and 7.0
    assert row["std"] == pytest.approx(0.0)
    assert row["n_images"] == 3 and row["pair"] == "MRI-SPECT"
    f4s = _cell(t2, label="Fuse4Seg", metric="SD")  # SD = EN + 1 in the fixture
    assert f4s["mean"] == pytest.approx(np.mean([8.2, 8.5]))
    assert f4s["std"] == pytest.approx(np.std([8.2, 8.5], ddof=1))
    vs = _csv(out, "table2_fusion_vs_paper.csv")
    hit = _cell(vs, label="CDDFuse", pair="MRI-SPECT", metric="EN")
    assert hit["paper"] == 7.142 and hit["diff"] == pytest.approx(7.0 - 7.142)
    pet = vs[vs["pair"] == "MRI-PET"]
    assert len(pet) == 7 * 7 and (pet["status"] == "missing").all() and pet["ours"].isna().all()
    md = (out / "tables" / "table2_fusion.md").read_text()
    assert "convention=fuse4seg" in md
    assert _md_row(md, "Fuse4Seg")[2] == "8.35 ± 0.21"  # SD column, two decimals as in the paper


def test_captions_state_settings_in_markdown_and_latex(rendered):
    out, _, _ = rendered
    for name in ("table1_segmentation", "table3_ablation"):
        md = (out / "tables" / f"{name}.md").read_text()
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert "Settings: aggregation=patient, empty_rule=nan, label_convention=brats2023." in md
        assert r"\caption{" in tex and r"aggregation=patient, empty\_rule=nan" in tex
        assert r"$\pm$" in tex and "±" not in tex


def test_caption_reports_disagreeing_settings(tree, tmp_path):
    root, dirs = tree
    odd = root / "brats" / "cddfuse" / "seed1" / "seg_scores.json"
    odd.write_text(json.dumps({**SEG_SETTINGS, "aggregation": "slice"}))
    render_tables(collect_runs(dirs), tmp_path / "tables")
    md = (tmp_path / "tables" / "table1_segmentation.md").read_text()
    assert "aggregation differs between runs: patient (" in md and "slice (CDDFuse + Seg)" in md
    assert "empty_rule=nan" in md


def test_figures_are_nontrivial_and_deterministic(rendered, tmp_path):
    out, paths, dirs = rendered
    figures = [p for p in paths if p.parent.name == "figures"]
    for png in (p for p in figures if p.suffix == ".png"):
        assert png.stat().st_size > 5000, png
        image = mpimg.imread(png)
        assert image[..., :3].std() > 0.05, png
        pdf = png.with_suffix(".pdf")
        assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 3000
    again = render_figures(collect_runs(dirs), tmp_path / "again")
    assert [p.name for p in again] == [p.name for p in figures]
    for first, second in zip(figures, again):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_collect_runs_reads_scores_and_keeps_patient_ids(tree):
    _, dirs = tree
    records = collect_runs(dirs)
    assert len(records) == len(dirs)
    f4s = next(r for r in records if r.run == "fuse4seg" and r.dataset == "brats" and r.seed == 1)
    assert list(f4s.seg_scores["patient"]) == PATIENTS  # ids stay strings
    assert f4s.seg_settings == SEG_SETTINGS and f4s.fusion_scores is None
    failed = next(r for r in records if r.run == "nnunet")
    assert failed.seg_scores is None and failed.examples_path is None


@pytest.mark.parametrize("content, message", [(None, "missing"), ("{not json", "malformed JSON"),
                                               ('{"method": "x"}', "missing field")])
def test_bad_run_record_names_the_file(tmp_path, content, message):
    run_dir = tmp_path / "brats" / "x" / "seed0"
    run_dir.mkdir(parents=True)
    if content is not None:
        (run_dir / "config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        collect_runs([run_dir])
    assert str(run_dir / "config.json") in str(info.value)


def test_score_file_without_required_columns_names_the_file(tree):
    root, dirs = tree
    bad = root / "brats" / "cddfuse" / "seed0" / "seg_scores.csv"
    pd.read_csv(bad).drop(columns="ET_iou").to_csv(bad, index=False)
    with pytest.raises(ValueError, match="ET_iou") as info:
        collect_runs(dirs)
    assert str(bad) in str(info.value)


def test_a_method_that_could_start_from_weights_says_when_it_did_not(tmp_path):
    info = MethodInfo("cenet", Path("cenet.py"), "multichannel", "CENet (2025)", "CENet (2025)",
                      weights={"encoder": "ImageNet PVTv2-b2"})
    rows = {}
    for name, weights in (("scratch", {}), ("pretrained", {"encoder": {"path": "/w/pvt.pth", "size": 1, "mtime_ns": 1}})):
        directory = tmp_path / name / "brats" / "cenet" / "seed0"
        directory.mkdir(parents=True)
        RunConfig(dataset="brats", dataset_kind="brats", method="cenet", kind="multichannel", variant=None, seed=0,
                  pipeline="segmentation", hparams={}, training={}, data={}, weights=weights).write(
            directory / "config.json")
        rows[name] = _collect_runs([directory], CONTEXT, methods={"cenet": info})[0]
    assert rows["scratch"].display_name == "CENet (2025) (from scratch)"
    assert rows["pretrained"].display_name == "CENet (2025)"
    assert rows["scratch"].table1_paper_key == "CENet (2025)"  # still matched to the paper's row


def test_a_skipped_method_is_named_beside_the_paper_not_just_missing(tmp_path):
    skipped = {"ddfm": ("needs diffusers>=0.30 (pip install 'diffusers>=0.30')",
                        MethodInfo("ddfm", Path("ddfm.py"), "fusion", "DDFM (in-domain prior)", "DDFM"))}
    render_tables([], tmp_path, skipped=skipped)
    vs = pd.read_csv(tmp_path / "table1_segmentation_vs_paper.csv")
    row = vs[(vs["paper_row"] == "DDFM + Seg") & (vs["metric"] == "mean_dice")].iloc[0]
    assert row["status"].startswith("skipped: needs diffusers")
    assert "skipped: needs diffusers" in (tmp_path / "table1_segmentation_vs_paper.md").read_text()
