"""What the Snakemake workflow runs: the plan of (dataset, run, seed) jobs and each job's resolved config.

Kept free of torch so that Snakemake can build the job graph quickly. The ``Snakefile`` validates the
config against ``workflows/schema/config.schema.yaml`` (filling defaults) and then calls ``Plan``.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .methods import METHODS_DIR, MethodInfo, discover_methods

_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class ConfigError(ValueError):
    """The workflow configuration is inconsistent (the message names the key at fault)."""


def expand_path(value: str, where: str) -> str:
    """Expand ``~``, ``$VAR``, ``${VAR}`` and ``${VAR:-default}``; an unset variable without a default is an
    error naming the config key, never a silently empty path."""

    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        if name in os.environ:
            return os.environ[name]
        if match.group(2) is not None:
            return match.group(2)
        raise ConfigError(f"{where}: path {value!r} uses unset environment variable {name}")

    return os.path.expanduser(_ENV_VAR.sub(substitute, value))


@dataclass(frozen=True)
class RunSpec:
    """One trained model: a method (or one of its ablation variants) on one dataset with one seed."""

    dataset: str
    run: str
    method: str
    variant: str | None
    seed: int

    @property
    def path(self) -> str:
        return f"{self.dataset}/{self.run}/seed{self.seed}"


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Plan:
    """The jobs a validated config asks for; new method files join with no other edit."""

    def __init__(self, config: dict[str, Any], methods_dir: Path | str = METHODS_DIR, warn=None):
        self.config = config
        self.results = config["results_dir"]
        found, problems = discover_methods(methods_dir)
        warn = warn or (lambda msg: print(msg, file=sys.stderr))
        for name, why in problems.items():
            warn(f"method {name!r} skipped: {why}")
        wanted = config["methods"]
        if wanted == "all":
            self.methods = found
        else:
            unknown = [m for m in wanted if m not in found]
            if unknown:
                raise ConfigError(
                    f"methods: {unknown} not found or invalid in {methods_dir} "
                    f"(available: {sorted(found)}; problems: {problems})"
                )
            self.methods = {m: found[m] for m in wanted}
        self.datasets = config["datasets"]
        for name, ds in self.datasets.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ConfigError(f"datasets.{name}: names may hold letters, digits and '_' only")
            if ds["source"] == "folder" and not ds.get("path"):
                raise ConfigError(f"datasets.{name}: source 'folder' needs a path")
        self.runs = self._runs()

    def dataset_kind(self, dataset: str) -> str:
        return self.datasets[dataset]["kind"]

    def datasets_of_kind(self, kind: str) -> list[str]:
        return [d for d, ds in self.datasets.items() if ds["kind"] == kind]

    def _runs(self) -> list[RunSpec]:
        runs = []
        for dataset in self.datasets:
            kind = self.dataset_kind(dataset)
            for name, info in self.methods.items():
                if not info.runs_on(kind):
                    continue
                variants: list[str | None] = [None]
                if kind == "brats" and self.config["ablations"]:
                    variants += list(info.ablations)
                for variant in variants:
                    run = name if variant is None else f"{name}-{variant}"
                    runs += [RunSpec(dataset, run, name, variant, seed) for seed in self.config["seeds"]]
        return runs

    def find(self, dataset: str, run: str, seed: int | str) -> RunSpec:
        for spec in self.runs:
            if spec.dataset == dataset and spec.run == run and spec.seed == int(seed):
                return spec
        raise ConfigError(f"no planned run {dataset}/{run}/seed{seed}")

    def hparams(self, spec: RunSpec) -> dict[str, Any]:
        info: MethodInfo = self.methods[spec.method]
        values = dict(info.hyperparameters)
        if self.config["method_scale"] == "test":
            values.update(info.test_config)
        values.update(self.config["method_overrides"].get(spec.method, {}))
        if spec.variant is not None:
            values.update(info.ablations[spec.variant].get("overrides", {}))
        unknown = set(values) - set(info.hyperparameters)
        if unknown:
            raise ConfigError(f"method_overrides.{spec.method}: unknown hyper-parameters {sorted(unknown)}")
        return values

    def run_config(self, spec: RunSpec) -> dict[str, Any]:
        """Everything that determines one run's result; Snakemake reruns the run when this changes."""
        info = self.methods[spec.method]
        ds = self.datasets[spec.dataset]
        if spec.variant is not None:
            label = info.ablations[spec.variant]["label"]
            order = info.ablations[spec.variant].get("order", 0)
        else:
            label, order = info.full_label, len(info.ablations)
        return {
            "dataset": spec.dataset,
            "run": spec.run,
            "method": spec.method,
            "variant": spec.variant,
            "seed": spec.seed,
            "device": self.config["device"],
            "hparams": self.hparams(spec),
            "training": deep_merge(self.config["training"], ds.get("training", {})),
            "follower": dict(self.config["follower"]),
            "evaluation": dict(self.config["evaluation"]),
            "data": {k: v for k, v in self.preprocess_settings(spec.dataset).items() if k not in ("raw", "synthetic")},
            "info": {
                "method": spec.method,
                "variant": spec.variant,
                "run": spec.run,
                "kind": info.kind,
                "display_name": info.display_name,
                "paper_name": info.paper_name,
                "ablation_label": label if (spec.variant or info.ablations) else None,
                "ablation_order": order,
                "dataset": spec.dataset,
                "dataset_kind": ds["kind"],
                "pair": ds.get("pair"),
                "seed": spec.seed,
            },
        }

    def preprocess_settings(self, dataset: str) -> dict[str, Any]:
        ds = self.datasets[dataset]
        keys = ["kind", "source", "split_fractions", "split_seed"]
        keys += ["modalities", "slice_size", "keep"] if ds["kind"] == "brats" else ["anatomical", "functional", "size", "on_mismatch"]
        settings = {k: ds.get(k) for k in keys}
        settings["raw"] = self.raw_dir(dataset)
        if ds["source"] == "synthetic":
            settings["synthetic"] = ds["synthetic"]
        return settings

    def raw_dir(self, dataset: str) -> str:
        ds = self.datasets[dataset]
        if ds["source"] == "synthetic":
            return f"{self.results}/raw/{dataset}"
        return expand_path(ds["path"], f"datasets.{dataset}.path")


def _fill_defaults(instance: Any, schema: dict[str, Any]) -> None:
    """Insert schema defaults, also inside ``additionalProperties`` maps (jsonschema alone never fills)."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(schema.get("properties", {})):
            _fill_defaults(instance[key], extra)


def validate_config(config: dict[str, Any], schema_path: Path | str) -> dict[str, Any]:
    """Validate ``config`` against the workflow schema, fill its defaults, and return it.

    Errors name the offending key path and the rule it breaks.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    config = copy.deepcopy(config)
    _fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]
        raise ConfigError("invalid workflow config:\n" + "\n".join(lines))
    return config
