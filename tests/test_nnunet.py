"""nnU-Net baseline (methods/nnunet.py): what the contract tests cannot see.

Our labels against nnU-Net's BraTS regions, the slices-as-cases conversion and its split, the plans at full size
(the counts of baselines.md), weights alone rebuilding the planned network, regions mapped back to our labels by
nnU-Net's own predictor, exact resumption, and nnU-Net's environment confined to its calls.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")
pytest.importorskip("dynamic_network_architectures")

import SimpleITK as sitk  # noqa: E402  (an nnunetv2 dependency)
from safetensors.torch import load_file  # noqa: E402

from benchmark.data.store import SliceDataset  # noqa: E402
from benchmark.training.checkpoint import load_weights, save_weights  # noqa: E402
from benchmark.training.engines import train_run  # noqa: E402
from conftest import quiet, tiny_plan  # noqa: E402
from methods._nnunet_model import PlannedUNet, make_setup  # noqa: E402
from methods._nnunet_prepare import (REGIONS, case_id, environment, label_map, simulated_plans,  # noqa: E402
                                     write_raw_dataset)

SMALL = {"regions": True, "base_features": 4, "max_features": 16, "gpu_memory_gb": 8}


def small_setup(shape=(32, 32), **settings):
    h = {**SMALL, **settings}
    plans, dataset_json = simulated_plans(shape, ["t1ce", "flair"], h)
    return make_setup(plans, dataset_json, label_map(h["regions"]))


def test_our_labels_land_in_nnunets_brats_regions():
    to_nnunet = label_map(True)
    assert list(to_nnunet[to_nnunet]) == [0, 1, 2, 3]  # its own inverse
    regions = {name: set(labels) for name, labels in REGIONS.items() if name != "background"}
    ncr, ed, et = (int(to_nnunet[label]) for label in (1, 2, 3))
    assert regions["whole tumor"] == {ncr, ed, et}
    assert regions["tumor core"] == {ncr, et}
    assert regions["enhancing tumor"] == {et}
    assert list(label_map(False)) == [0, 1, 2, 3]


def test_every_train_and_val_slice_is_one_case_split_by_patient(stores, tmp_path):
    folder = tmp_path / "raw"
    split = write_raw_dataset(stores["brats"], folder, regions=True)
    description = json.loads((folder / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "t1ce", "1": "flair"}
    assert description["numTraining"] == len(split["train"]) + len(split["val"])
    patients = {}
    for name in ("train", "val"):
        store = SliceDataset(stores["brats"] / f"{name}.h5")
        assert split[name] == [case_id(n) for n in store.names]
        patients[name] = set(store.patients)
    assert split["train"] and split["val"] and not patients["train"] & patients["val"]
    store = SliceDataset(stores["brats"] / "train.h5")
    index = int(np.argmax([(store[i]["label"] > 0).sum() for i in range(len(store))]))
    key, item = split["train"][index], store[index]
    for channel in (0, 1):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "imagesTr" / f"{key}_000{channel}.nii.gz")))
        assert np.array_equal(image, item["images"][channel].numpy())
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / f"{key}.nii.gz")))
    assert np.array_equal(label, label_map(True)[item["label"].numpy()]) and label.max() > 0


@pytest.mark.parametrize("shape, stages, batch, params", [((192, 160), 6, 105, 20_621_364),
                                                          ((256, 256), 7, 49, 33_475_128)])
def test_full_size_plans_match_the_reference_counts(shape, stages, batch, params):
    """nnU-Net's planner at its defaults on brain-cropped / uncropped BraTS slice shapes (baselines.md)."""
    h = {"regions": False, "base_features": 32, "max_features": 512, "gpu_memory_gb": 8}
    plans, dataset_json = simulated_plans(shape, ["t1ce", "flair"], h)
    config = plans["configurations"]["2d"]
    arch = config["architecture"]["arch_kwargs"]
    assert config["patch_size"] == list(shape) and config["batch_size"] == batch
    assert arch["n_stages"] == stages and arch["features_per_stage"][:5] == [32, 64, 128, 256, 512]
    assert config["use_mask_for_norm"] == [True, True]
    net = PlannedUNet(make_setup(plans, dataset_json, label_map(False)))
    assert sum(p.numel() for p in net.parameters()) == params


def test_weights_alone_rebuild_the_planned_network(tmp_path):
    torch.manual_seed(0)
    trained = PlannedUNet(small_setup((32, 32))).eval()
    save_weights(tmp_path / "model.safetensors", {"segmenter": trained}, {})  # safetensors: no tensor twice
    keys = load_file(str(tmp_path / "model.safetensors"))
    assert not any(".all_modules." in k or ".decoder.encoder." in k for k in keys)
    other = PlannedUNet(small_setup((64, 48), base_features=8)).eval()  # another plan: rebuilt from the weights
    load_weights(tmp_path / "model.safetensors", {"segmenter": other})
    assert other.setup == trained.setup
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        assert torch.allclose(other(x), trained(x), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on nnU-Net's z-score of the all-zero slice
@pytest.mark.parametrize("regions, biases, ours", [(True, (5.0, 5.0, -5.0), 1), (True, (5.0, -5.0, -5.0), 2),
                                                   (True, (5.0, 5.0, 5.0), 3), (False, (0.0, 0.0, 0.0, 5.0), 3)])
def test_segment_maps_nnunets_segmentation_back_to_our_labels(regions, biases, ours):
    """A network whose last head outputs constants: nnU-Net's predictor turns them into its label map (regions
    thresholded in its order) and ``predict`` maps that to ours. nnU-Net crops each slice to its non-zero box and
    puts background outside it; an all-zero slice has nothing to crop."""
    net = PlannedUNet(small_setup((32, 32), regions=regions)).eval()
    head = net.network.decoder.seg_layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(biases))
    images = torch.zeros(3, 2, 17, 22)
    images[0] = torch.rand(2, 17, 22) + 0.1
    images[1, :, 4:12, 5:15] = torch.rand(2, 8, 10) + 0.1
    out = net.predict(images, mirroring=True, tile_step_size=0.5)
    assert out.shape == (3, 4, 17, 22) and torch.isfinite(out).all()
    labels = out.argmax(1)
    inside = torch.zeros(17, 22, dtype=torch.bool)
    inside[4:12, 5:15] = True
    assert (labels[0] == ours).all() and (labels[2] == ours).all()
    assert (labels[1][inside] == ours).all() and (labels[1][~inside] == 0).all()


def test_resumed_run_follows_the_uninterrupted_one(stores, tmp_path):
    plan = tiny_plan()
    rec = plan.record(plan.find("brats", "nnunet", 0))
    rec = dataclasses.replace(rec, hparams={**rec.hparams, "epochs": 3})
    before = {k: os.environ.get(k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    train_run(rec, stores["brats"], tmp_path / "straight", device="cpu", progress=quiet)
    assert train_run(rec, stores["brats"], tmp_path / "resumed", device="cpu", stop_after_epochs=2,
                     progress=quiet) == {"interrupted_after": 2}
    messages = []
    train_run(rec, stores["brats"], tmp_path / "resumed", device="cpu", progress=messages.append)
    assert any("resuming" in m for m in messages)
    first, second = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("straight", "resumed"))
    assert first.keys() == second.keys()
    assert all(torch.allclose(first[k].float(), second[k].float(), rtol=1e-5, atol=1e-6) for k in first)
    results = tmp_path / "resumed" / "nnunet" / "results"
    assert (next(results.rglob("checkpoint_final.pth"))).is_file() and next(results.rglob("progress.png")).is_file()
    assert {k: os.environ.get(k) for k in before} == before  # nnU-Net's paths were set for its calls only


def test_environment_is_restored(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "7")
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with environment(tmp_path, processes=1, augmentation_processes=0, compile_network=False):
        assert os.environ["nnUNet_raw"] == str(tmp_path / "raw") and os.environ["nnUNet_n_proc_DA"] == "0"
    assert os.environ["nnUNet_n_proc_DA"] == "7" and "nnUNet_raw" not in os.environ
