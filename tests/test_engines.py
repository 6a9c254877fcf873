"""Training engines end to end on tiny synthetic stores: bi-level mechanics, EMA, resume, evaluation,
inference from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from benchmark.data.brats import find_cases
from benchmark.data.preprocess import preprocess_brats, preprocess_paired
from benchmark.data.synthetic import write_brats_phantoms, write_paired_phantoms
from benchmark.evaluate import evaluate_run
from benchmark.inference import fuse_files, segment_case
from benchmark.training import engines
from benchmark.training.engines import Engine, bilevel_iteration, train_run
from benchmark.training.follower import build_follower
from benchmark.workflow import Plan, deep_merge, validate_config

from conftest import DEFAULT_CONFIG, SCHEMA

TINY = {
    "training": {"batch_size": 4, "fusion_epochs": 1, "warmup_epochs": 1, "bilevel_epochs": 1,
                 "max_batches_per_epoch": 2, "inner_steps": 2, "ema_decay": 0.5},
    "follower": {"dims": [4, 8, 16, 32], "depths": [1, 1, 1, 1], "bottleneck_heads": 2},
    "evaluation": {"n_examples": 2},
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    write_brats_phantoms(root / "raw_brats", n_cases=5, seed=0, shape=(32, 32, 8))
    preprocess_brats(root / "raw_brats", root / "brats", slice_size=(32, 32), split_fractions=(0.6, 0.2, 0.2),
                     workers=1, progress=False)
    write_paired_phantoms(root / "raw_spect", "SPECT", n_studies=4, slices_per_study=2, seed=1, size=32)
    preprocess_paired(root / "raw_spect", root / "spect", functional="SPECT", split_fractions=(0.5, 0.25, 0.25))
    return {"brats": root / "brats", "harvard_mri_spect": root / "spect", "raw_brats": root / "raw_brats",
            "raw_spect": root / "raw_spect"}


def plan() -> Plan:
    config = deep_merge(yaml.safe_load(DEFAULT_CONFIG.read_text()), TINY)
    return Plan(validate_config(config, SCHEMA))


def run_config(dataset: str, run: str, **training) -> dict:
    p = plan()
    cfg = p.run_config(p.find(dataset, run, 0))
    cfg["training"].update(training)
    cfg["device"] = "cpu"
    return cfg


def quiet(_msg: str) -> None:
    pass


def test_one_bilevel_iteration_updates_follower_on_d_tr_and_leader_on_d_val(stores):
    cfg = run_config("brats", "fuse4seg")
    engine = Engine(cfg, stores["brats"], stores["brats"] / "unused", quiet)
    torch.manual_seed(0)
    leader = engine.method.build_leader()
    follower = build_follower(cfg["follower"])
    batch = next(iter(engine.patient_loader(0)))
    tr, val = engines.partition_by_patient(batch["patient"], 0.5, seed=0)
    assert set(np.asarray(batch["patient"])[tr]).isdisjoint(np.asarray(batch["patient"])[val])
    a, b = batch["images"][:, :1], batch["images"][:, 1:2]
    target = batch["label"]

    def run(target_val_shift: int):
        torch.manual_seed(1)
        lead, foll = engine.method.build_leader(), build_follower(cfg["follower"])
        lead.load_state_dict(leader.state_dict())
        foll.load_state_dict(follower.state_dict())
        opt_l, opt_f = engine.adamw(lead, 1e-3), engine.adamw(foll, 1e-3)
        calls = {"leader": [], "follower": []}
        lead.register_forward_hook(lambda m, i, o: calls["leader"].append((i[0].shape[0], torch.is_grad_enabled())))
        foll.register_forward_hook(
            lambda m, i, o: calls["follower"].append((i[0].shape[0], any(p.requires_grad for p in m.parameters())))
        )
        steps = {"l": 0, "f": 0}
        for key, opt in (("l", opt_l), ("f", opt_f)):
            opt.register_step_post_hook(lambda *args, key=key: steps.__setitem__(key, steps[key] + 1))
        shifted = target.clone()
        shifted[val] = (shifted[val] + target_val_shift) % 4
        bilevel_iteration(engine, lead, foll, opt_l, opt_f, a, b, shifted, tr, val)
        return lead, foll, calls, steps

    lead0, foll0, calls, steps = run(0)
    k = cfg["training"]["inner_steps"]
    assert steps == {"l": 1, "f": k}
    assert calls["leader"] == [(len(tr), False), (len(val), True)]  # frozen on D_tr, learning on D_val
    assert calls["follower"] == [(len(tr), True)] * k + [(len(val), False)]  # frozen during the leader step
    assert any(not torch.equal(p, q) for p, q in zip(leader.parameters(), lead0.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(follower.parameters(), foll0.parameters()))
    lead1, foll1, _, _ = run(1)  # other D_val labels: the follower must not notice, the leader must
    assert all(torch.equal(p, q) for p, q in zip(foll0.parameters(), foll1.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(lead0.parameters(), lead1.parameters()))


@pytest.mark.parametrize("run", ["average", "unet_multichannel", "fuse4seg", "fuse4seg-baseline"])
def test_tiny_brats_runs_train_and_evaluate(stores, tmp_path, run):
    out = tmp_path / run
    train_run(run_config("brats", run), stores["brats"], out, progress=quiet)
    for name in ("model.safetensors", "run.json", "train_log.csv"):
        assert (out / name).is_file()
    evaluate_run(out, stores["brats"], device="cpu")
    scores = pd.read_csv(out / "seg_scores.csv")
    test_patients = len(np.unique(pd.read_json(stores["brats"] / "splits.json", typ="series")["test"]))
    assert len(scores) == test_patients
    values = scores[["NCR_dice", "ED_dice", "ET_dice", "mean_dice"]].to_numpy(float)
    assert np.all((values[~np.isnan(values)] >= 0) & (values[~np.isnan(values)] <= 1))
    examples = np.load(out / "examples.npz")
    assert examples["prediction"].shape == examples["label"].shape == (2, 32, 32)
    assert ("fused" in examples) == (run != "unet_multichannel")


def test_bilevel_log_has_every_stage_and_evaluation_uses_the_ema_leader(stores, tmp_path):
    out = tmp_path / "f"
    train_run(run_config("brats", "fuse4seg"), stores["brats"], out, progress=quiet)
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["stage"]) == ["leader_pretrain", "warmup", "bilevel"]
    ema = load_file(str(out / "work" / "last.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    ema_keys = [k for k in ema if k.startswith("state.emas.leader.")]
    assert ema_keys
    for key in ema_keys:
        assert torch.equal(ema[key], final["leader." + key[len("state.emas.leader."):]])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(stores, tmp_path):
    cfg = run_config("brats", "fuse4seg")
    train_run(cfg, stores["brats"], tmp_path / "straight", progress=quiet)
    assert train_run(cfg, stores["brats"], tmp_path / "resumed", stop_after_epochs=2, progress=quiet) == {
        "interrupted_after": 2
    }
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train_run(cfg, stores["brats"], tmp_path / "resumed", progress=quiet)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fusion_only_run_writes_scores_and_colour_images(stores, tmp_path):
    out = tmp_path / "paired"
    train_run(run_config("harvard_mri_spect", "fuse4seg"), stores["harvard_mri_spect"], out, progress=quiet)
    evaluate_run(out, stores["harvard_mri_spect"], device="cpu")
    scores = pd.read_csv(out / "fusion_scores.csv", dtype={"name": str})
    assert list(scores.columns) == ["name", "EN", "SD", "MI", "PSNR", "SF", "Qabf", "SSIM"]
    assert scores[["EN", "SD", "MI", "SF"]].notna().all().all()
    pngs = sorted((out / "fused").glob("*.png"))
    assert len(pngs) == len(scores)
    assert Image.open(pngs[0]).mode == "RGB"
    sources = {p.stem for p in (stores["raw_spect"] / "MRI").glob("*.png")}
    assert {p.stem for p in pngs} <= sources and set(scores["name"]) <= sources  # named as the source files


def test_fuse_a_pair_and_segment_a_case_from_checkpoints(stores, tmp_path):
    paired = tmp_path / "paired"
    train_run(run_config("harvard_mri_spect", "fuse4seg"), stores["harvard_mri_spect"], paired, progress=quiet)
    mri = sorted((stores["raw_spect"] / "MRI").glob("*.png"))[0]
    spect = stores["raw_spect"] / "SPECT" / mri.name
    fused = fuse_files(paired, mri, spect, tmp_path / "fused.png", device="cpu")
    image = np.asarray(Image.open(fused))
    assert image.shape == (32, 32, 3) and image.std() > 0

    brats = tmp_path / "brats"
    train_run(run_config("brats", "average"), stores["brats"], brats, progress=quiet)
    case = find_cases(stores["raw_brats"])[0]
    out = segment_case(brats, case.folder, tmp_path / "seg.nii.gz", device="cpu")
    seg = nib.load(out)
    reference = nib.load(case.path("seg"))
    assert seg.shape == reference.shape
    assert np.allclose(seg.affine, reference.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
