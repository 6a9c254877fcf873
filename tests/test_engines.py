"""Training engines end to end on tiny synthetic stores: bi-level mechanics, EMA, resume and fingerprints, the
training patients evaluation checks, CPU bfloat16 autocast through the real entry point, inference from a run."""

from __future__ import annotations

import dataclasses
import math
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import benchmark.inference
from benchmark.data.brats import find_cases
from benchmark.data.preprocess import preprocess_brats
from benchmark.data.splits import partition_by_patient
from benchmark.data.synthetic import write_brats_phantoms
from benchmark.evaluate import evaluate_run
from benchmark.fused_store import fuse_splits
from benchmark.inference import fuse_files, segment_case
from benchmark.methods import METHOD_DIRS_ENV, load_method
from benchmark.record import FOLLOWER_DIR, FUSED_STORE, FollowerConfig, RecordError, RunConfig
from benchmark.training.bilevel import bilevel_iteration
from benchmark.training.context import TrainContext
from benchmark.training.engines import train_follower, train_run
from benchmark.training.follower import build_follower
from benchmark.training.loop import CPU_AMP_ENV
from benchmark.workflow import validate_section

from conftest import FIXTURE_METHODS, TINY, quiet, run_tiny_pipeline, tiny_plan

CLOSE = {"rtol": 1e-5, "atol": 1e-6}  # weights of two runs of one recipe: equal up to float rounding


def record(dataset: str, run: str, **training):
    p = tiny_plan()
    rec = p.record(p.find(dataset, run, 0))
    return dataclasses.replace(rec, training={**rec.training, **training})


def same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() == second.keys() and all(torch.allclose(first[k], second[k], **CLOSE) for k in first)


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

    def changed(before, after) -> bool:  # any change at all: a difference is never a rounding artefact here
        return any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters()))

    def same(before, after) -> bool:  # equal up to float rounding
        return all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(before.parameters(), after.parameters()))

    lead0, foll0, calls, steps = run(0)
    k = rec.training["inner_steps"]
    assert steps == {"l": 1, "f": k}
    assert calls["leader"] == [(len(tr), False), (len(val), True)]  # frozen on D_tr, learning on D_val
    assert calls["follower"] == [(len(tr), True)] * k + [(len(val), False)]  # frozen during the leader step
    assert changed(leader, lead0) and changed(follower, foll0)
    lead1, foll1, _, _ = run(1)  # other D_val labels: the follower must not notice, the leader must
    assert same(foll0, foll1)
    assert changed(lead0, lead1)


def test_disjoint_variant_of_a_joint_method_trains_and_evaluates(stores, tmp_path):
    """Fuse4Seg with bilevel off (Table 3's baseline): leader on the physical losses, fused store, shared follower."""
    out = tmp_path / "baseline"
    run_tiny_pipeline(tiny_plan(), "brats", "fuse4seg-baseline", stores, out)
    for name in ("model.safetensors", "run.json", "train_log.csv", "follower/model.safetensors", "fused_store/test.h5"):
        assert (out / name).is_file()
    scores = pd.read_csv(out / "seg_scores.csv")
    assert len(scores) == len(pd.read_json(stores["brats"] / "splits.json", typ="series")["test"])
    values = scores[["NCR_dice", "ED_dice", "ET_dice", "mean_dice"]].to_numpy(float)
    assert np.all((values[~np.isnan(values)] >= 0) & (values[~np.isnan(values)] <= 1))
    examples = np.load(out / "examples.npz")
    assert examples["prediction"].shape == examples["label"].shape == (2, 32, 32) and "fused" in examples


def test_joint_run_under_cpu_bfloat16_autocast(stores, tmp_path, monkeypatch):
    """The AMP path of CUDA runs, on CPU through ``train_run``: networks compute in bfloat16, every loss stepped and
    the leader's min-max normalised image are float32, the losses and the validation Dice stay finite; every stage
    is logged and the EMA leader is saved."""
    import benchmark.training.context as context

    conv_dtypes, loss_dtypes = set(), set()
    conv_forward, step = torch.nn.Conv2d._conv_forward, context.clip_and_step

    def recorded_conv(self, x, weight, bias):
        out = conv_forward(self, x, weight, bias)
        conv_dtypes.add(out.dtype)
        return out

    def recorded_step(loss, *args, **kwargs):
        loss_dtypes.add(loss.dtype)
        return step(loss, *args, **kwargs)

    def recorded_fused(module, inputs, output):  # the leader's min-max normalised image
        if hasattr(output, "fused"):
            fused_dtypes.add(output.fused.dtype)

    fused_dtypes = set()
    monkeypatch.setenv(CPU_AMP_ENV, "1")
    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", recorded_conv)
    monkeypatch.setattr(context, "clip_and_step", recorded_step)
    out = tmp_path / "f"
    hook = torch.nn.modules.module.register_module_forward_hook(recorded_fused)
    try:
        train_run(record("brats", "fuse4seg"), stores["brats"], out, device="cpu", progress=quiet)
    finally:
        hook.remove()
    assert torch.bfloat16 in conv_dtypes and loss_dtypes == {torch.float32} and fused_dtypes == {torch.float32}
    log = pd.read_csv(out / "train_log.csv")
    assert list(log["stage"]) == ["leader_pretrain", "warmup", "bilevel"]
    losses = log.drop(columns=["epoch", "stage"]).to_numpy(float)
    assert np.isfinite(losses[~np.isnan(losses)]).all() and np.isfinite(log["loss"].iloc[0])
    assert np.isfinite(log["val_dice"].dropna()).all() and log["val_dice"].notna().any()
    ema = load_file(str(out / "work" / "last.safetensors"))
    final = load_file(str(out / "model.safetensors"))
    ema_keys = [k for k in ema if k.startswith("state.emas.leader.")]
    assert ema_keys
    for key in ema_keys:  # evaluation uses the EMA leader: copied, so equal
        assert torch.equal(ema[key], final["leader." + key[len("state.emas.leader."):]])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(stores, tmp_path):
    rec = record("brats", "fuse4seg")
    train_run(rec, stores["brats"], tmp_path / "straight", device="cpu", progress=quiet)
    assert train_run(rec, stores["brats"], tmp_path / "resumed", device="cpu", stop_after_epochs=2,
                     progress=quiet) == {"interrupted_after": 2}
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    messages = []
    train_run(rec, stores["brats"], tmp_path / "resumed", device="cpu", progress=messages.append)
    assert any("resuming" in m for m in messages)
    assert same_weights(tmp_path / "straight" / "model.safetensors", tmp_path / "resumed" / "model.safetensors")


def _disjoint_average(stores_dir: Path, run: Path, rec: RunConfig, follower, progress=quiet) -> None:
    """The average pipeline's training rules: train (nothing to learn), fuse every split, train the follower."""
    train_run(rec, stores_dir, run, device="cpu", progress=progress)
    rec.write(run / "config.json")
    fuse_splits(run, stores_dir, ("train", "val", "test"), run / FUSED_STORE, device="cpu", progress=False)
    follower.write(run / FOLLOWER_DIR / "config.json")
    train_follower(follower, run / FUSED_STORE, run / FOLLOWER_DIR, device="cpu", progress=progress)


def test_a_changed_follower_setting_retrains_instead_of_resuming(stores, tmp_path):
    """Issue 12, defect 1: after a change of follower_lr the finished follower checkpoint was resumed (no epoch
    run, the same model bytes)."""
    plan = tiny_plan()
    spec = plan.find("brats", "average", 0)
    rec, follower = plan.record(spec), plan.follower_run(spec)
    run = tmp_path / "run"
    _disjoint_average(stores["brats"], run, rec, follower)
    before = run / "before.safetensors"
    shutil.copy(run / FOLLOWER_DIR / "model.safetensors", before)
    training = follower.follower.training
    faster = dataclasses.replace(follower, follower=FollowerConfig(
        follower.follower.network, {**training, "follower_lr": 10 * training["follower_lr"]}))
    messages = []
    train_follower(faster, run / FUSED_STORE, run / FOLLOWER_DIR, device="cpu", progress=messages.append)
    assert any("not resuming" in m and "starting fresh" in m for m in messages)
    train_follower(faster, run / FUSED_STORE, tmp_path / "fresh", device="cpu", progress=quiet)
    assert same_weights(run / FOLLOWER_DIR / "model.safetensors", tmp_path / "fresh" / "model.safetensors")
    assert not same_weights(run / FOLLOWER_DIR / "model.safetensors", before)


def test_a_re_split_store_retrains_and_evaluation_refuses_patients_seen_in_training(stores, tmp_path):
    """Issue 12, defect 1: after split_seed 0 -> 1 the stores were rebuilt and fused again, but the follower resumed
    its finished checkpoint and was scored on patients of its own training split."""
    resplit = tmp_path / "store1"
    preprocess_brats(stores["raw_brats"], resplit, slice_size=(32, 32), split_fractions=(0.6, 0.2, 0.2), seed=1,
                     workers=1, progress=False)
    old = pd.read_json(stores["brats"] / "splits.json", typ="series")
    new = pd.read_json(resplit / "splits.json", typ="series")
    leaked = sorted(set(new["test"]) & (set(old["train"]) | set(old["val"])))
    assert leaked  # seed 1 moves training patients of seed 0 into the test split
    plan = tiny_plan()
    spec = plan.find("brats", "average", 0)
    rec, follower = plan.record(spec), plan.follower_run(spec)
    rec1 = dataclasses.replace(rec, data={**rec.data, "split_seed": 1})
    run = tmp_path / "run"
    _disjoint_average(stores["brats"], run, rec, follower)
    train_run(rec1, resplit, run, device="cpu", progress=quiet)  # the fusion run and its fused store: new split,
    rec1.write(run / "config.json")
    fuse_splits(run, resplit, ("train", "val", "test"), run / FUSED_STORE, device="cpu", progress=False)
    settings = validate_section(TINY["evaluation"], "evaluation")  # ... but the follower of the old split
    with pytest.raises(RecordError, match=rf"patients {leaked[0]} \((train|val)\).*follower/model.safetensors model's "
                                          r"training data.*retrain"):
        evaluate_run(run, resplit, settings, device="cpu")
    assert not (run / "seg_scores.csv").exists()
    messages = []  # the workflow's re-run of the follower
    train_follower(follower, run / FUSED_STORE, run / FOLLOWER_DIR, device="cpu", progress=messages.append)
    assert any("not resuming" in m and "starting fresh" in m for m in messages)
    evaluate_run(run, resplit, settings, device="cpu")
    assert set(pd.read_csv(run / "seg_scores.csv")["patient"].astype(str)) == set(new["test"])


class _WholeBrainRun:
    """Stands for a trained BraTS run whose segmenter says NCR everywhere, with a 16 x 16 window."""

    def __init__(self, run_dir, device):
        self.record = RunConfig("brats", "brats", "stub", "multichannel", None, 0, "segmentation", {}, {},
                                {"modalities": ["t1ce", "flair"], "slice_size": [16, 16]})

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(images), 4, *images.shape[-2:])
        logits[:, 1] = 1.0
        return logits


def test_segment_reads_only_its_case_and_covers_a_brain_larger_than_the_window(tmp_path, monkeypatch):
    """Issue 12, defect 10: segment scanned the case's parent (warnings about siblings) and left the brain outside
    the trained window at background."""
    (case,) = write_brats_phantoms(tmp_path / "cases", 1, seed=2, shape=(40, 36, 6))
    (tmp_path / "cases" / "notes").mkdir()  # an unrelated sibling
    monkeypatch.setattr(benchmark.inference, "TrainedRun", _WholeBrainRun)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = segment_case(tmp_path / "run", case, tmp_path / "seg.nii.gz", device="cpu")
    labels = np.asarray(nib.load(out).dataobj)
    brain = np.asarray(nib.load(case / "Phantom_000_flair.nii.gz").dataobj) > 0
    xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    assert np.ptp(xs) >= 16 and np.ptp(ys) >= 16  # the brain is larger than the window both ways
    assert (labels[brain] == 1).all()  # every brain voxel was segmented


def test_window_origins_cover_the_extent_with_overlap():
    for extent, window in [(16, 16), (17, 16), (40, 16), (100, 32)]:
        origins = benchmark.inference.window_origins(extent, window)
        covered = np.zeros(extent, bool)
        for o in origins:
            covered[o:o + window] = True
        assert covered.all() and origins[-1] + window == max(extent, window)
        assert all(b - a <= window / 2 for a, b in zip(origins, origins[1:]))
    assert benchmark.inference.window_origins(10, 16) == [0]


def test_fusion_only_run_writes_scores_and_colour_images(stores, tmp_path):
    out = tmp_path / "paired"
    run_tiny_pipeline(tiny_plan(), "harvard_mri_spect", "average", stores, out)
    scores = pd.read_csv(out / "fusion_scores.csv", dtype={"name": str})
    assert list(scores.columns) == ["name", "EN", "SD", "MI", "PSNR", "SF", "Qabf", "SSIM"]
    assert scores[["EN", "SD", "MI", "SF"]].notna().all().all()
    pngs = sorted((out / "fused").glob("*.png"))
    assert len(pngs) == len(scores)
    assert Image.open(pngs[0]).mode == "RGB"
    sources = {p.stem for p in (stores["raw_spect"] / "MRI").glob("*.png")}
    assert {p.stem for p in pngs} <= sources and set(scores["name"]) <= sources  # named as the source files


def test_fuse_a_pair_and_segment_a_case_from_trained_runs(stores, tmp_path, monkeypatch):
    monkeypatch.setenv(METHOD_DIRS_ENV, str(FIXTURE_METHODS))  # a small trained fusion method: costly
    plan = tiny_plan()
    paired = tmp_path / "paired"
    rec = plan.record(plan.find("harvard_mri_spect", "costly", 0))
    rec.write(paired / "config.json")
    train_run(rec, stores["harvard_mri_spect"], paired, device="cpu", progress=quiet)
    mri = sorted((stores["raw_spect"] / "MRI").glob("*.png"))[0]
    spect = stores["raw_spect"] / "SPECT" / mri.name
    fused = fuse_files(paired, mri, spect, tmp_path / "fused.png", device="cpu")
    image = np.asarray(Image.open(fused))
    assert image.shape == (32, 32, 3) and image.std() > 0

    brats = tmp_path / "brats"
    run_tiny_pipeline(plan, "brats", "average", stores, brats)
    case = find_cases(stores["raw_brats"])[0]
    out = segment_case(brats, case.folder, tmp_path / "seg.nii.gz", device="cpu")
    seg = nib.load(out)
    reference = nib.load(case.path("seg"))
    assert seg.shape == reference.shape
    assert np.allclose(seg.affine, reference.affine)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    assert math.isfinite(float(np.asarray(seg.dataobj).mean()))
