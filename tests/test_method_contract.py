"""Contract tests over every discovered method (benchopt style): a new method file is tested with no edit here.

Each method is built at its own tiny ``test_config`` and checked for output shape, range and determinism, then
trained end to end on every dataset kind it runs on through the same functions the workflow's rules call
(train, fuse once per slice, the shared follower, evaluate) and scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from benchmark.data.preprocess import preprocess_paired
from benchmark.data.synthetic import write_paired_phantoms
from benchmark.methods import METHOD_DIRS_ENV, discover_methods, load_method
from benchmark.record import RunConfig
from benchmark.training.engines import train_run
from metrics.segmentation import N_CLASSES

from conftest import run_tiny_pipeline, tiny_plan

METHODS, PROBLEMS = discover_methods()
H, W = 17, 22  # odd and even on purpose
DATASET_OF_KIND = {"brats": "brats", "paired": "harvard_mri_spect"}  # the tiny stores of conftest
RUNS = [(name, kind) for name, info in sorted(METHODS.items()) for kind in ("brats", "paired") if info.runs_on(kind)
        and info.missing_reason() is None]


def test_every_method_file_is_valid():
    assert PROBLEMS == {}, PROBLEMS


def _sources(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, H, W, generator=g), torch.rand(2, 1, H, W, generator=g)


def _output(name: str):
    """The method's output on fixed random sources: fused images, or logits of the stacked sources."""
    torch.manual_seed(0)
    method = load_method(name, METHODS[name].test_config)
    nets = {k: net.eval() for k, net in method.networks().items()}
    a, b = _sources()
    with torch.no_grad():
        if method.kind == "multichannel":
            return method.kind, method.segment(nets, torch.cat([a, b], dim=1))
        return method.kind, method.fuse(nets, a, b)


@pytest.mark.parametrize("name", sorted(n for n, i in METHODS.items() if i.missing_reason() is None))
def test_output_shape_range_and_determinism(name):
    kind, out = _output(name)
    if kind == "multichannel":
        assert out.shape == (2, N_CLASSES, H, W)
    else:
        assert out.shape == (2, 1, H, W)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()
    _, again = _output(name)
    assert torch.allclose(out, again, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n, i in METHODS.items() if i.kind != "multichannel"
                                         and i.missing_reason() is None))
def test_a_slice_is_fused_alike_whatever_shares_its_batch(name):
    """The fuse rule fuses a store in batches: a slice's fused image must not depend on the other slices of its
    batch (nor on the batch size), or results would change with ``evaluation.batch_size``."""
    torch.manual_seed(0)
    method = load_method(name, METHODS[name].test_config)
    nets = {k: net.eval() for k, net in method.networks().items()}
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 1, H, W, generator=g), torch.rand(3, 1, H, W, generator=g)
    with torch.no_grad():
        together = method.fuse(nets, a, b)
        alone = torch.cat([method.fuse(nets, a[k:k + 1], b[k:k + 1]) for k in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("name, dataset_kind", RUNS)
def test_trains_and_evaluates_end_to_end(name, dataset_kind, stores, tmp_path):
    dataset = DATASET_OF_KIND[dataset_kind]
    plan = tiny_plan()
    written = run_tiny_pipeline(plan, dataset, name, stores, tmp_path)
    record = RunConfig.of_run_dir(tmp_path)
    scores = pd.read_csv(written[0], dtype={"name": str, "patient": str})
    if dataset_kind == "brats":
        test_patients = len(pd.read_json(stores[dataset] / "splits.json", typ="series")["test"])
        assert len(scores) == test_patients
        dice = scores[["NCR_dice", "ED_dice", "ET_dice", "mean_dice"]].to_numpy(float)
        assert np.all((dice[~np.isnan(dice)] >= 0) & (dice[~np.isnan(dice)] <= 1))
    else:
        assert len(scores) > 0 and scores[["EN", "SD", "SF", "Qabf"]].notna().all().all()
    examples = np.load(tmp_path / "examples.npz")
    assert ("fused" in examples) == record.fuses
    # a method that trained for at least one epoch changed its weights
    log = pd.read_csv(tmp_path / "train_log.csv")
    torch.manual_seed(record.seed)
    method = load_method(name, record.hparams, record=record)
    initial = {f"{net}.{k}": v for net, m in method.networks().items() for k, v in m.state_dict().items()}
    trained = load_file(str(tmp_path / "model.safetensors"))
    if len(log) and any(v.is_floating_point() for v in initial.values()):
        assert any(not torch.allclose(initial[k], trained[k]) for k in initial if initial[k].is_floating_point())


@pytest.fixture(scope="module")
def black_store(tmp_path_factory):
    """A paired store whose images are black in both sources: what a training patch inside the black border of a
    real Harvard or GFP-PC image looks like."""
    from PIL import Image

    root = tmp_path_factory.mktemp("black")
    write_paired_phantoms(root / "raw", "SPECT", n_studies=2, slices_per_study=2, seed=2, size=32)
    for png in sorted((root / "raw").rglob("*.png")):
        with Image.open(png) as image:  # a colour image must not be gray (R, G, B within 2 levels): a faint constant red
            Image.new(image.mode, image.size, (4, 0, 0) if image.mode == "RGB" else 0).save(png)
    preprocess_paired(root / "raw", root / "store", functional="SPECT", split_fractions=(0.5, 0.0, 0.5))
    return root / "store"


@pytest.mark.parametrize("name", [name for name, kind in RUNS if kind == "paired"])
def test_trains_on_black_pairs_without_a_non_finite_gradient(name, black_store, tmp_path):
    """A non-finite gradient stops training (``clip_and_step``); on a black pair no loss term may produce one."""
    plan = tiny_plan()
    train_run(plan.record(plan.find("harvard_mri_spect", name, 0)), black_store, tmp_path, device="cpu",
              progress=lambda message: None)
    assert all(torch.isfinite(v).all() for v in load_file(str(tmp_path / "model.safetensors")).values())


def test_the_templates_two_examples_train_and_evaluate(stores, tmp_path, monkeypatch):
    """``methods/_template.py`` stays runnable: its fusion example (own two-phase recipe) and its segmentation
    example (own optimiser), each copied as a method file, go through the whole pipeline."""
    from conftest import REPO

    text = (REPO / "methods" / "_template.py").read_text(encoding="utf-8")
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "template_fusion.py").write_text(text)
    (methods / "template_segmentation.py").write_text(
        text.replace("class Method(FusionMethod)", "class FusionExample(FusionMethod)")
            .replace("class SegmentationMethodExample(MultiChannelMethod)", "class Method(MultiChannelMethod)"))
    monkeypatch.setenv(METHOD_DIRS_ENV, str(methods))  # as the workflow's method_dirs does for its jobs
    plan = tiny_plan()
    run_tiny_pipeline(plan, "brats", "template_fusion", stores, tmp_path / "fusion")
    log = pd.read_csv(tmp_path / "fusion" / "train_log.csv")
    assert list(log["stage"]) == ["reconstruction", "fusion"]
    run_tiny_pipeline(plan, "brats", "template_segmentation", stores, tmp_path / "segmentation")
    log = pd.read_csv(tmp_path / "segmentation" / "train_log.csv")
    assert list(log["stage"]) == ["segmentation"] * 2 and log["lr"].iloc[0] == pytest.approx(1e-2)
