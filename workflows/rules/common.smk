# Helpers shared by the rule files; everything else lives in benchmark.workflow.
import json
import os


localrules:
    synthesize,
    run_config,
    render,


wildcard_constraints:
    seed=r"\d+",
    run=r"[A-Za-z0-9_\-]+",


BRATS = PLAN.datasets_of_kind("brats")
PAIRED = PLAN.datasets_of_kind("paired")
ENV = "../envs/benchmark.yaml"


def one_of(names):
    """A wildcard constraint matching exactly these names (or nothing when the list is empty)."""
    return "|".join(names) if names else "(?!)"


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def store_files(dataset):
    return expand(f"{RESULTS}/{dataset}/store/{{split}}.h5", split=["train", "val", "test"])


def raw_input(wildcards):
    """Synthetic datasets depend on their phantoms; real folders are read in place."""
    if PLAN.datasets[wildcards.dataset]["source"] == "synthetic":
        return f"{RESULTS}/raw/{wildcards.dataset}/.complete"
    return []


def render_inputs(wildcards):
    """Scores and example arrays of every planned run."""
    files = []
    for spec in PLAN.runs:
        run_dir = f"{RESULTS}/{spec.path}"
        scores = "seg_scores.csv" if PLAN.dataset_kind(spec.dataset) == "brats" else "fusion_scores.csv"
        files += [f"{run_dir}/{scores}", f"{run_dir}/examples.npz"]
    return files


TABLES = ["table1_segmentation", "table2_fusion", "table3_ablation"]
