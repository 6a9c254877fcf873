# Helpers shared by the rule files; everything else lives in benchmark.workflow.
import json
import os

from benchmark.record import fused_splits


localrules:
    synthesize,
    run_config,
    follower_config,
    render,


wildcard_constraints:
    dataset=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    run=r"[A-Za-z0-9_\-]+",
    split=r"train|val|test",


BRATS = PLAN.datasets_of_kind("brats")
PAIRED = PLAN.datasets_of_kind("paired")
ENV = "../envs/benchmark.yaml"
RUN_DIR = f"{RESULTS}/{{dataset}}/{{run}}/seed{{seed}}"


def one_of(names):
    """A wildcard constraint matching exactly these names (or nothing when the list is empty)."""
    return "|".join(names) if names else "(?!)"


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def spec_of(wildcards):
    return PLAN.find(wildcards.dataset, wildcards.run, wildcards.seed)


def run_dir(wildcards):
    return f"{RESULTS}/{wildcards.dataset}/{wildcards.run}/seed{wildcards.seed}"


def store_files(dataset, splits=("train", "val", "test")):
    return [f"{RESULTS}/{dataset}/store/{split}.h5" for split in splits]


def raw_input(wildcards):
    """Synthetic datasets depend on their phantoms; real folders are read in place."""
    if PLAN.datasets[wildcards.dataset]["source"] == "synthetic":
        return f"{RESULTS}/raw/{wildcards.dataset}/.complete"
    return []


def segmenter_inputs(wildcards):
    """What scores a BraTS run: the follower on the run's fused test store, or the method on the sources; with the
    run.json files that list the patients each model trained on."""
    spec, folder = spec_of(wildcards), run_dir(wildcards)
    models = [f"{folder}/model.safetensors", f"{folder}/run.json"]
    if spec.pipeline == "segmentation":
        return models
    if spec.pipeline == "disjoint":
        models += [f"{folder}/follower/model.safetensors", f"{folder}/follower/run.json"]
    return models + [f"{folder}/fused_store/test.h5"]


def render_inputs(wildcards):
    """Scores and example arrays of every planned run."""
    files = []
    for spec in PLAN.runs:
        folder = f"{RESULTS}/{spec.path}"
        scores = "seg_scores.csv" if PLAN.dataset_kind(spec.dataset) == "brats" else "fusion_scores.csv"
        files += [f"{folder}/{scores}", f"{folder}/examples.npz"]
    return files


TABLES = ["table1_segmentation", "table2_fusion", "table3_ablation"]
