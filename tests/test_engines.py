"""Training engines end to end on tiny synthetic stores: bi-level mechanics, EMA, resume, evaluation,
inference from a checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from benchmark.data.brats import find_cases
from benchmark.data.splits import partition_by_patient
from benchmark.inference import fuse_files, segment_case
from benchmark.methods import load_method
from benchmark.training.bilevel import bilevel_iteration
from benchmark.training.context import TrainContext
from benchmark.training.engines import train_run
from benchmark.training.follower import build_follower

from conftest import quiet, run_tiny_pipeline, tiny_plan


def record(dataset: str, run: str, **training):
    p = tiny_plan()
    rec = p.record(p.find(dataset, run, 0))
    return dataclasses.replace(rec, training={**rec.training, **training})


def pipeline(dataset: str, run: str, stores, out: Path):
    """Train, fuse, train the follower and evaluate, as the workflow's rules do."""
    return run_tiny_pipeline(tiny_plan(), dataset, run, stores, out)


def test_one_bilevel_iteration_updates_follower_on_d_tr_and_leader_on_d_val(stores):
    rec = record("brats", "fuse4seg")
    ctx = TrainContext(rec.training, rec.seed, stores["brats"], stores["brats"] / "unused", record=rec, device="cpu",
                       progress=quiet)
    method = load_method("fuse4seg", rec.hparams, record=rec)
    torch.manual_seed(0)
    leader = method.build_leader()
    follower = build_follower(rec.follower.network)
    batch = next(iter(ctx.patient_loader(0)))
    tr, val = partition_by_patient(batch["patient"], 0.5, seed=0)
    assert set(np.asarray(batch["patient"])[tr]).isdisjoint(np.asarray(batch["patient"])[val])
    a, b = batch["images"][:, :1], batch["images"][:, 1:2]
    target = batch["label"]

    def run(target_val_shift: int):
        torch.manual_seed(1)
        lead, foll = method.build_leader(), build_follower(rec.follower.network)
        lead.load_state_dict(leader.state_dict())
        foll.load_state_dict(follower.state_dict())
        opt_l, opt_f = torch.optim.AdamW(lead.parameters(), 1e-3), torch.optim.AdamW(foll.parameters(), 1e-3)
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
        bilevel_iteration(method, ctx, lead, foll, opt_l, opt_f, a, b, shifted, tr, val)
        return lead, foll, calls, steps

    lead0, foll0, calls, steps = run(0)
    k = rec.training["inner_steps"]
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
    pipeline("brats", run, stores, out)
    for name in ("model.safetensors", "run.json", "train_log.csv"):
        assert (out / name).is_file()
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
    train_run(record("brats", "fuse4seg"), stores["brats"], out, device="cpu", progress=quiet)
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["stage"]) == ["leader_pretrain", "warmup", "bilevel"]
    ema = load_file(str(out / "work" / "last.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    ema_keys = [k for k in ema if k.startswith("state.emas.leader.")]
    assert ema_keys
    for key in ema_keys:
        assert torch.equal(ema[key], final["leader." + key[len("state.emas.leader."):]])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(stores, tmp_path):
    rec = record("brats", "fuse4seg")
    train_run(rec, stores["brats"], tmp_path / "straight", device="cpu", progress=quiet)
    assert train_run(rec, stores["brats"], tmp_path / "resumed", device="cpu", stop_after_epochs=2,
                     progress=quiet) == {"interrupted_after": 2}
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train_run(rec, stores["brats"], tmp_path / "resumed", device="cpu", progress=quiet)
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fusion_only_run_writes_scores_and_colour_images(stores, tmp_path):
    out = tmp_path / "paired"
    pipeline("harvard_mri_spect", "fuse4seg", stores, out)
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
    rec = record("harvard_mri_spect", "fuse4seg")
    rec.write(paired / "config.json")
    train_run(rec, stores["harvard_mri_spect"], paired, device="cpu", progress=quiet)
    mri = sorted((stores["raw_spect"] / "MRI").glob("*.png"))[0]
    spect = stores["raw_spect"] / "SPECT" / mri.name
    fused = fuse_files(paired, mri, spect, tmp_path / "fused.png", device="cpu")
    image = np.asarray(Image.open(fused))
    assert image.shape == (32, 32, 3) and image.std() > 0

    brats = tmp_path / "brats"
    pipeline("brats", "average", stores, brats)
    case = find_cases(stores["raw_brats"])[0]
    out = segment_case(brats, case.folder, tmp_path / "seg.nii.gz", device="cpu")
    seg = nib.load(out)
    reference = nib.load(case.path("seg"))
    assert seg.shape == reference.shape
    assert np.allclose(seg.affine, reference.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
