"""Shared fixtures: paths to the repository and to the optional real sample data; tiny stores and a tiny plan
for end-to-end runs of methods.

Tests compute on tiny tensors: one CPU thread per test process (and per subprocess it starts) is fastest, and with
``-n 2`` it keeps the two workers from oversubscribing two cores, where OpenMP's spinning threads slow small
operations down by orders of magnitude.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.data.preprocess import preprocess_brats, preprocess_paired
from benchmark.data.synthetic import write_brats_phantoms, write_paired_phantoms
from benchmark.pipeline import run_pipeline
from benchmark.workflow import Plan, deep_merge, validate_config

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the subprocesses: the CLI, Snakemake's jobs
REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_CONFIG = REPO / "workflows" / "config" / "default.yaml"
SCHEMA = REPO / "workflows" / "schema" / "config.schema.yaml"
FIXTURE_METHODS = Path(__file__).resolve().parent / "fixtures" / "methods"

# The default config shrunk to seconds per run: every method at its test_config, 1-2 batches an epoch.
TINY = {
    "training": {"batch_size": 4, "fusion_epochs": 1, "warmup_epochs": 1, "bilevel_epochs": 1,
                 "max_batches_per_epoch": 2, "inner_steps": 2, "ema_decay": 0.5},
    "follower": {"dims": [4, 8, 16, 32], "depths": [1, 1, 1, 1], "bottleneck_heads": 2},
    "evaluation": {"n_examples": 2},
}


def pytest_collection_modifyitems(items):
    """Slow end-to-end runs first, so that the parallel workers (``-n 2``) finish together rather than waiting for
    one last long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (see the README's 'Data' section)")
    return SHARED_DATA


def quiet(_msg: str) -> None:
    pass


def tiny_plan(methods_dir=None) -> Plan:
    config = deep_merge(yaml.safe_load(DEFAULT_CONFIG.read_text()), TINY)
    for dataset in config["datasets"].values():  # the tiny budget wins over the default's per-dataset epochs
        dataset.pop("training", None)
    return Plan(validate_config(config, SCHEMA), methods_dir)


def run_tiny_pipeline(plan: Plan, dataset: str, run: str, stores: dict[str, Path], out: Path) -> list[Path]:
    """Train, fuse, train the follower and evaluate one planned run, as the workflow's rules do."""
    spec = plan.find(dataset, run, 0)
    follower = plan.follower_run(spec) if spec.pipeline == "disjoint" else None
    return run_pipeline(plan.record(spec), stores[dataset], out, evaluation=TINY["evaluation"], follower=follower,
                        device="cpu", progress=quiet)


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Tiny BraTS and Harvard SPECT stores (and their raw phantom folders), named as the default config's datasets."""
    root = tmp_path_factory.mktemp("data")
    write_brats_phantoms(root / "raw_brats", n_cases=5, seed=0, shape=(32, 32, 8))
    preprocess_brats(root / "raw_brats", root / "brats", slice_size=(32, 32), split_fractions=(0.6, 0.2, 0.2),
                     workers=1, progress=False)
    write_paired_phantoms(root / "raw_spect", "SPECT", n_studies=4, slices_per_study=2, seed=1, size=32)
    preprocess_paired(root / "raw_spect", root / "spect", functional="SPECT", split_fractions=(0.5, 0.25, 0.25))
    return {"brats": root / "brats", "harvard_mri_spect": root / "spect", "raw_brats": root / "raw_brats",
            "raw_spect": root / "raw_spect"}
