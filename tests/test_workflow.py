"""The Snakemake workflow: lint, dry run of the default config, and a full run of a tiny config."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--nolock", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_lint_is_clean():
    out = snakemake("--lint")
    assert out.returncode == 0, out.stdout + out.stderr


def test_dry_run_of_the_default_config_plans_every_method_and_table(tmp_path):
    out = snakemake("-n", "--cores", "2", "--resources", "gpu=1", "--config", f"results_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    log = out.stdout + out.stderr
    for needle in ("rule preprocess", "rule train", "rule evaluate_segmentation", "rule evaluate_fusion",
                   "rule render", "brats/fuse4seg-variant_a/seed0", "gfp_pc/average/seed0"):
        assert needle in log


def test_bad_config_value_stops_with_the_key_named(tmp_path):
    out = snakemake("-n", "--config", "seeds=[-1]", cwd=tmp_path)
    assert out.returncode != 0
    assert "seeds.0" in out.stdout + out.stderr


@pytest.mark.slow
def test_tiny_config_runs_end_to_end_and_reports(tmp_path):
    config = {
        "results_dir": str(tmp_path / "results"),
        "seeds": [0],
        "device": "cpu",
        "threads_per_job": 1,
        "methods": ["average", "fuse4seg"],
        "method_scale": "test",
        "ablations": False,
        "datasets": {
            "brats": {"kind": "brats", "source": "synthetic", "synthetic": {"n_cases": 5, "shape": [32, 32, 8]},
                      "slice_size": [32, 32]},
            "harvard_mri_spect": {"kind": "paired", "pair": "MRI-SPECT", "source": "synthetic", "functional": "SPECT",
                                  "synthetic": {"pair": "SPECT", "n_studies": 4, "slices_per_study": 2, "size": 32},
                                  "split_fractions": [0.5, 0.25, 0.25]},
        },
        "training": {"batch_size": 4, "fusion_epochs": 1, "warmup_epochs": 1, "bilevel_epochs": 1,
                     "max_batches_per_epoch": 2},
        "follower": {"dims": [4, 8, 16, 32], "depths": [1, 1, 1, 1], "bottleneck_heads": 2},
        "evaluation": {"n_examples": 2},
    }
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("--cores", "2", "--resources", "gpu=1", "--configfile", str(cfg), cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tables = tmp_path / "results" / "tables"
    table1 = pd.read_csv(tables / "table1_segmentation.csv")
    assert {"Average + Seg", "Fuse4Seg"} <= set(table1.astype(str).stack())
    for name in ("table1_segmentation", "table2_fusion", "table3_ablation"):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    assert list((tmp_path / "results" / "figures").glob("interpretability_brats.png"))
    for log in ("train.log", "evaluate.log"):
        assert (tmp_path / "results" / "logs" / "brats" / "fuse4seg" / "seed0" / log).is_file()
    assert (tmp_path / "results" / "benchmarks" / "brats" / "fuse4seg" / "seed0" / "train.tsv").is_file()
    again = snakemake("-n", "--cores", "2", "--resources", "gpu=1", "--configfile", str(cfg), cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr  # a re-run recomputes nothing
    report = snakemake("--configfile", str(cfg), "--report", str(tmp_path / "report.html"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 10_000
