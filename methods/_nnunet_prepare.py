"""nnU-Net's data side for one run: its folders and environment, our slices in its raw layout, its fingerprint,
planning and 2d preprocessing, and a plan simulated for an assumed slice shape (the network before any data).

Every slice of the run's train and val stores is one 2D nnU-Net case (``<case>_0000`` = first modality, T1ce,
``_0001`` = second, FLAIR; a 2D NIfTI each, spacing (999, 1, 1) as nnU-Net reads 2D images), named after the
store's slice name; ``splits_final.json`` holds one fold: our train patients' slices for training, our val
patients' for validation. nnU-Net then crops, normalises and plans on top of our stores' [0, 1] slices.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import types
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

DATASET = "Dataset001_BraTSSlices"
PLANS = "nnUNetPlans"
CONFIGURATION = "2d"
FILE_ENDING = ".nii.gz"
# What nnU-Net reports for a 2D image read by its SimpleITKIO (in-plane spacing 1, 999 x that out of plane).
SPACING_2D = [999.0, 1.0, 1.0]
# Our labels are 1 NCR, 2 ED, 3 ET. nnU-Net's BraTS conversion (its Dataset137) uses 1 ED, 2 NCR, 3 ET and trains
# the regions whole tumour (1, 2, 3), tumour core (2, 3) and enhancing tumour (3): the map swaps 1 and 2 and is
# its own inverse. Without regions the labels are kept as they are, softmax over the four classes.
BRATS_LABELS = (0, 2, 1, 3)
REGIONS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
CLASSES = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}


def label_map(regions: bool) -> np.ndarray:
    """Our label -> nnU-Net's label (and back: both maps are involutions)."""
    return np.array(BRATS_LABELS if regions else (0, 1, 2, 3), dtype=np.uint8)


def dataset_json(channels: Sequence[str], regions: bool, n_cases: int) -> dict[str, Any]:
    description = {
        "channel_names": {str(i): name for i, name in enumerate(channels)},
        "labels": REGIONS if regions else CLASSES,
        "numTraining": int(n_cases),
        "file_ending": FILE_ENDING,
        "overwrite_image_reader_writer": "SimpleITKIO",
    }
    if regions:
        description["regions_class_order"] = [1, 2, 3]
    return description


@contextlib.contextmanager
def environment(root: Path, *, processes: int, augmentation_processes: int, compile_network: bool) -> Iterator[None]:
    """nnU-Net's folders under ``root`` and its process counts, set for the duration only (it reads them at use)."""
    values = {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_def_n_proc": str(processes),
        "nnUNet_n_proc_DA": str(augmentation_processes),
        "nnUNet_compile": "true" if compile_network else "false",
    }
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def in_process_pools(processes: int) -> Iterator[None]:
    """With one process, nnU-Net's per-case fingerprint and preprocessing work runs in a thread of this process.

    Its ``spawn`` pools start a fresh interpreter that imports nnunetv2 again (about 5 CPU-seconds each on these
    machines) and re-runs an unguarded ``__main__``; a one-thread pool does the same per-case calls in order.
    """
    if processes > 1:
        yield
        return
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.preprocessing.preprocessors import default_preprocessor

    modules = (fingerprint_extractor, default_preprocessor)
    saved = [module.multiprocessing for module in modules]
    shim = types.SimpleNamespace(get_context=lambda method: types.SimpleNamespace(Pool=ThreadPool))
    for module in modules:
        module.multiprocessing = shim
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.multiprocessing = original


def case_id(name: str) -> str:
    """A slice's name as an nnU-Net case identifier (file-name safe, no dots: those would end the file name)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", str(name))


def write_raw_dataset(store_dir: Path, folder: Path, regions: bool) -> dict[str, list[str]]:
    """Our train and val slices as nnU-Net cases in ``folder`` (imagesTr, labelsTr, dataset.json); their split."""
    import SimpleITK as sitk

    from benchmark.data.store import SliceDataset, read_store_attrs

    to_nnunet = label_map(regions)
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    split: dict[str, list[str]] = {}
    for name in ("train", "val"):
        store = SliceDataset(store_dir / f"{name}.h5")
        if not store.has_labels:
            raise ValueError(f"{store.path}: nnU-Net trains on labelled slices; this store has no labels")
        keys = []
        for index in range(len(store)):
            item = store[index]
            key = case_id(store.names[index])
            for channel, image in enumerate(item["images"].numpy().astype(np.float32)):
                path = folder / "imagesTr" / f"{key}_{channel:04d}{FILE_ENDING}"
                sitk.WriteImage(sitk.GetImageFromArray(image), str(path))
            label = to_nnunet[item["label"].numpy()]
            sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "labelsTr" / f"{key}{FILE_ENDING}"))
            keys.append(key)
        store.close()
        split[name] = keys
    if not split["train"]:
        raise ValueError(f"{store_dir / 'train.h5'}: no training slices for nnU-Net")
    if len(set(split["train"] + split["val"])) != len(split["train"]) + len(split["val"]):
        raise ValueError(f"{store_dir}: slice names are not unique across train and val; nnU-Net needs one case each")
    channels = read_store_attrs(store_dir / "train.h5")["modalities"]
    description = dataset_json(channels, regions, len(split["train"]) + len(split["val"]))
    # every case listed explicitly: without this list nnU-Net finds the files with a fork Pool of 12 processes,
    # which can deadlock in a process that already runs threads (seen in a workflow job)
    description["dataset"] = {
        key: {"images": [f"imagesTr/{key}_{channel:04d}{FILE_ENDING}" for channel in range(len(channels))],
              "label": f"labelsTr/{key}{FILE_ENDING}"}
        for key in split["train"] + split["val"]}
    (folder / "dataset.json").write_text(json.dumps(description, indent=2), encoding="utf-8")
    return split


def planner_class():
    """nnU-Net's default 2D planner with the U-Net's base and maximum widths as settings."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    class WidthPlanner(ExperimentPlanner):
        def __init__(self, dataset: str, *, base_features: int, max_features: int, gpu_memory_gb: float):
            super().__init__(dataset, gpu_memory_target_in_gb=gpu_memory_gb)
            self.UNet_base_num_features = base_features
            self.UNet_max_features_2d = max_features

    return WidthPlanner


# The settings that change what nnU-Net's planning and preprocessing produce.
PREPARE_KEYS = ("regions", "base_features", "max_features", "gpu_memory_gb", "fingerprint_voxels")


def data_identity(store_dir: Path, h: dict[str, Any]) -> dict[str, Any]:
    """What the prepared folders were made from: the stores' content and the planning settings."""
    from benchmark.data.store import read_store_attrs

    stores = {}
    for split in ("train", "val"):
        attrs = read_store_attrs(Path(store_dir) / f"{split}.h5")
        stores[split] = attrs.get("content_digest") or [attrs["n_items"], attrs["patients"]]
    return {"stores": stores, "settings": {key: h[key] for key in PREPARE_KEYS}}


def prepare(store_dir: Path, root: Path, h: dict[str, Any], processes: int) -> tuple[dict, dict]:
    """Convert, fingerprint, plan and preprocess (2d) once per run folder; return (plans, dataset.json).

    Called inside ``environment(root, ...)``. A marker written last names the stores and settings it was made
    from; without it (an interrupted preparation) or with another one, everything is made anew.
    """
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    preprocessed = root / "preprocessed" / DATASET
    marker = preprocessed / "prepared.json"
    identity = data_identity(store_dir, h)
    if not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) != identity:
        raw = root / "raw" / DATASET
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(preprocessed, ignore_errors=True)
        split = write_raw_dataset(Path(store_dir), raw, h["regions"])
        val = split["val"] or split["train"]  # no val patients: validate on the training slices (nnU-Net's fold "all")
        preprocessed.mkdir(parents=True, exist_ok=True)
        (preprocessed / "splits_final.json").write_text(json.dumps([{"train": split["train"], "val": val}]))
        with in_process_pools(processes):
            extractor = DatasetFingerprintExtractor(DATASET, processes, verbose=False)
            extractor.num_foreground_voxels_for_intensitystats = float(h["fingerprint_voxels"])
            extractor.show_progress_bar = False
            extractor.run(overwrite_existing=True)
            planner_class()(DATASET, base_features=h["base_features"], max_features=h["max_features"],
                            gpu_memory_gb=h["gpu_memory_gb"]).plan_experiment()
            preprocessor = DefaultPreprocessor(verbose=False)
            preprocessor.show_progress_bar = False
            preprocessor.run(DATASET, CONFIGURATION, PLANS, processes)
        marker.write_text(json.dumps(identity), encoding="utf-8")
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text(encoding="utf-8"))
    description = json.loads((preprocessed / "dataset.json").read_text(encoding="utf-8"))
    return plans, description


def simulated_plans(shape: Sequence[int], channels: Sequence[str], h: dict[str, Any],
                    cases: int = 10_000) -> tuple[dict, dict]:
    """nnU-Net's planner run on a fingerprint of ``cases`` slices of median ``shape`` (after its crop).

    The fingerprint is what nnU-Net would measure on brain-cropped BraTS slices: spacing (999, 1, 1), a median
    relative size after cropping below 3/4 (so z-scores inside the non-zero mask), [0, 1] intensities (unused
    by the z-score). ``cases`` is large so that nnU-Net's 5 %-of-the-data batch cap does not bind.
    """
    description = dataset_json(channels, h["regions"], cases)
    n = len(channels)
    description["dataset"] = {"case": {"images": [f"imagesTr/case_{c:04d}{FILE_ENDING}" for c in range(n)],
                                       "label": f"labelsTr/case{FILE_ENDING}"}}
    intensities = {"mean": 0.5, "median": 0.5, "std": 0.25, "min": 0.0, "max": 1.0, "percentile_99_5": 1.0,
                   "percentile_00_5": 0.0}
    fingerprint = {
        "spacings": [SPACING_2D] * 2,
        "shapes_after_crop": [[1, int(shape[0]), int(shape[1])]] * 2,
        "foreground_intensity_properties_per_channel": {str(c): intensities for c in range(n)},
        "median_relative_size_after_cropping": 0.5,
    }
    with tempfile.TemporaryDirectory(prefix="nnunet-plan-") as tmp:
        root = Path(tmp)
        (root / "raw" / DATASET).mkdir(parents=True)
        (root / "preprocessed" / DATASET).mkdir(parents=True)
        (root / "raw" / DATASET / "dataset.json").write_text(json.dumps(description))
        (root / "preprocessed" / DATASET / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
        with environment(root, processes=1, augmentation_processes=1, compile_network=False), \
                contextlib.redirect_stdout(io.StringIO()):
            plans = planner_class()(DATASET, base_features=h["base_features"], max_features=h["max_features"],
                                    gpu_memory_gb=h["gpu_memory_gb"]).plan_experiment()
    del description["dataset"]
    return json.loads(json.dumps(plans)), description
