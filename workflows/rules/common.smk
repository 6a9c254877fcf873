# Helpers shared by the rule files; everything else lives in benchmark.workflow.
import json


localrules:
    synthesize,
    run_config,
    render,


wildcard_constraints:
    seed=r"\d+",
    run=r"[A-Za-z0-9_\-]+",


BRATS = PLAN.datasets_of_kind("brats")
PAIRED = PLAN.datasets_of_kind("paired")


def one_of(names):
    """A wildcard constraint matching exactly these names (or nothing when the list is empty)."""
    return "|".join(names) if names else "(?!)"


def as_json(obj):
    return json.dumps(obj, sort_keys=True)


def store_files(dataset):
    return expand(f"{RESULTS}/{dataset}/store/{{split}}.h5", split=["train", "val", "test"])


def run_dirs(datasets):
    return [f"{RESULTS}/{spec.path}" for spec in PLAN.runs if spec.dataset in datasets]
