"""What the Snakemake workflow runs: the plan of (dataset, run, seed) jobs and each job's resolved config.

Kept free of torch so that Snakemake can build the job graph quickly. The ``Snakefile`` validates the
config against ``workflows/schema/config.schema.yaml`` (filling defaults) and then calls ``Plan``, which checks
what the schema cannot express (``dataset_problems``, method names in per-method sections, folders), so that
every bad value stops the dry run with its key path instead of failing a job later.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fingerprint import code_version, digest, raw_manifest
from .methods import MethodInfo, discover_methods
from .record import FollowerConfig, FollowerRun, RunConfig, pipeline_of

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflows" / "schema" / "config.schema.yaml"
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
    pipeline: str

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


def _load_schema(schema_path: Path | str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))


def dataset_problems(where: str, ds: dict[str, Any], raw: str | None, raw_key: str = "path") -> list[str]:
    """What is wrong with a dataset's entry ``ds`` (schema-valid, defaults filled) beyond the schema, each as
    ``"<where>.<key>: problem"`` (``where``: its key path, e.g. ``datasets.brats``); ``raw`` is its raw folder,
    expanded (None for synthetic sources), given under the key ``raw_key``."""
    problems = []
    fractions = ds["split_fractions"]
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        problems.append(f"{where}.split_fractions: {fractions} sum to {sum(fractions):g}, not 1")
    if fractions[0] == 0 or fractions[2] == 0:
        problems.append(f"{where}.split_fractions: {fractions}: training and test need patients (first and last > 0)")
    paired = ds["kind"] == "paired"
    if ds["source"] == "synthetic":
        pair = ds["synthetic"].get("pair")
        if paired and pair != ds["functional"]:
            problems.append(f"{where}.functional: {ds['functional']!r}, but the phantoms are {pair!r} pairs "
                            f"({where}.synthetic.pair)")
    elif raw is not None:
        root = Path(raw)
        if not root.is_dir():
            problems.append(f"{where}.{raw_key}: {root}: no such folder")
        elif paired:
            needed = ("PCI", "GFP") if ds["functional"] == "GFP" else (ds["anatomical"], ds["functional"])
            missing = [f"{d}/" for d in needed if not (root / d).is_dir()]
            if missing:
                found = sorted(f"{p.name}/" for p in root.iterdir() if p.is_dir())
                problems.append(f"{where}.functional: {ds['functional']!r} (anatomical {ds['anatomical']!r}) needs "
                                f"{', '.join(missing)} in {root}, which holds {', '.join(found) or 'no folder'}")
    return problems


def training_defaults(schema_path: Path | str = SCHEMA_PATH) -> dict[str, Any]:
    """The schema's default of every ``training`` setting (the lowest level of a run's training settings)."""
    properties = _load_schema(schema_path)["$defs"]["training"]["properties"]
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items()}


class Plan:
    """The jobs a validated config asks for; new method files join with no other edit."""

    def __init__(self, config: dict[str, Any], methods_dir: list[Path] | Path | str | None = None, warn=None,
                 schema_path: Path | str = SCHEMA_PATH):
        self.config = config
        self.results = config["results_dir"]
        warn = warn or (lambda msg: print(msg, file=sys.stderr))
        found, broken = discover_methods(methods_dir)
        for name, why in broken.items():
            warn(f"method {name!r} skipped: {why}")
        wanted = config["methods"]
        if wanted == "all":
            chosen = found
        else:
            unknown = [m for m in wanted if m not in found]
            if unknown:
                raise ConfigError(
                    f"methods: {unknown} not found or invalid (available: {sorted(found)}; problems: {broken})"
                )
            chosen = {m: found[m] for m in wanted}
        self.skipped: dict[str, str] = {}
        self.methods: dict[str, MethodInfo] = {}
        self._chosen = chosen
        for name, info in chosen.items():
            reason = info.missing_reason()
            if reason:
                warn(f"method {name!r}: its jobs are skipped: {reason}")
                self.skipped[name] = reason
            else:
                self.methods[name] = info
        self.datasets = config["datasets"]
        problems = self._dataset_problems() + self._method_key_problems(found, broken)
        if problems:
            raise ConfigError("invalid workflow config:\n" + "\n".join(f"  {p}" for p in problems))
        self._training_defaults = training_defaults(schema_path)
        self.weights = self._weights()
        self.runs = self._runs()

    def _dataset_problems(self) -> list[str]:
        problems = []
        for name, ds in self.datasets.items():
            if ds["source"] == "folder" and not ds.get("path"):
                problems.append(f"datasets.{name}.path: source 'folder' needs a path")
                continue
            try:
                raw = self.raw_dir(name) if ds["source"] == "folder" else None
            except ConfigError as err:
                problems.append(str(err))
                continue
            problems += dataset_problems(f"datasets.{name}", ds, raw)
        return problems

    def _method_key_problems(self, found: dict[str, MethodInfo], broken: dict[str, str]) -> list[str]:
        """Sections keyed by method name must name methods; ``method_dirs`` must exist."""
        problems = [f"{section}.{name}: no method of this name (found: {', '.join(sorted(found))})"
                    for section in ("method_overrides", "method_training")
                    for name in self.config[section] if name not in found and name not in broken]
        problems += [f"method_dirs.{i}: {folder}: no such folder" for i, folder in enumerate(self.config["method_dirs"])
                     if not Path(folder).is_dir()]
        return problems

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
                    bilevel = bool(self._hparams(info, variant).get("bilevel", True))
                    pipeline = pipeline_of(info.kind, kind, bilevel)
                    runs += [RunSpec(dataset, run, name, variant, seed, pipeline) for seed in self.config["seeds"]]
        return runs

    def find(self, dataset: str, run: str, seed: int | str) -> RunSpec:
        for spec in self.runs:
            if spec.dataset == dataset and spec.run == run and spec.seed == int(seed):
                return spec
        raise ConfigError(f"no planned run {dataset}/{run}/seed{seed}")

    def runs_with(self, *pipelines: str) -> list[RunSpec]:
        return [spec for spec in self.runs if spec.pipeline in pipelines]

    def _hparams(self, info: MethodInfo, variant: str | None) -> dict[str, Any]:
        values = dict(info.hyperparameters)
        if self.config["method_scale"] == "test":
            values.update(info.test_config)
        values.update(self.config["method_overrides"].get(info.name, {}))
        if variant is not None:
            values.update(info.ablations[variant].get("overrides", {}))
        unknown = set(values) - set(info.hyperparameters)
        if unknown:
            raise ConfigError(f"method_overrides.{info.name}: unknown hyper-parameters {sorted(unknown)}")
        return values

    def hparams(self, spec: RunSpec) -> dict[str, Any]:
        return self._hparams(self.methods[spec.method], spec.variant)

    def training(self, dataset: str, method: str | None = None) -> dict[str, Any]:
        """Resolved training settings, lowest first: schema defaults, the method's ``training``, the config's
        ``training``, ``datasets.<dataset>.training``, ``method_training.<method>``. Without a method: the shared
        follower's settings (no method level)."""
        values = dict(self._training_defaults)
        if method is not None:
            values.update(self.methods[method].training)
        values.update(self.config.get("training", {}))
        values.update(self.datasets[dataset].get("training", {}))
        if method is not None:
            values.update(self.config["method_training"].get(method, {}))
        return values

    def code_version(self, method: str | None) -> str:
        """Version of the code that trains ``method``'s runs (None: the shared follower); a train rule parameter,
        so that Snakemake retrains exactly the runs whose code changed."""
        return code_version(self.methods[method].path if method is not None else None)

    def raw_digest(self, dataset: str) -> str | None:
        """Digest of the manifest of a raw folder (every file's path, size and modification time); a parameter
        of the preprocess rule, so that an edited, added or removed file rebuilds that dataset's stores. None for
        synthetic sources, whose phantoms are the synthesize rule's output."""
        if self.datasets[dataset]["source"] == "synthetic":
            return None
        return digest(raw_manifest(self.raw_dir(dataset)))

    def follower(self, dataset: str) -> FollowerConfig:
        return FollowerConfig(network=dict(self.config["follower"]), training=self.training(dataset))

    def record(self, spec: RunSpec) -> RunConfig:
        """Everything that determines one run's trained result (its ``config.json``)."""
        info = self.methods[spec.method]
        return RunConfig(
            dataset=spec.dataset,
            dataset_kind=self.dataset_kind(spec.dataset),
            method=spec.method,
            kind=info.kind,
            variant=spec.variant,
            seed=spec.seed,
            pipeline=spec.pipeline,
            hparams=self.hparams(spec),
            training=self.training(spec.dataset, spec.method),
            data={k: v for k, v in self.preprocess_settings(spec.dataset).items() if k not in ("raw", "synthetic")},
            follower=self.follower(spec.dataset) if spec.pipeline == "joint" else None,
            weights=self.weights.get(spec.method, {}),
        )

    def follower_run(self, spec: RunSpec) -> FollowerRun:
        """``follower/config.json`` of a disjoint pipeline."""
        if spec.pipeline != "disjoint":
            raise ConfigError(f"{spec.path}: a {spec.pipeline} run has no separate follower")
        return FollowerRun(run=spec.path, seed=spec.seed, follower=self.follower(spec.dataset))

    def _weights(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Weight files given in ``weights.<method>.<name>``: each must be declared by the method and exist.

        A file's size and modification time join the run's record, so replacing it retrains the run.
        """
        given: dict[str, dict[str, dict[str, Any]]] = {}
        for method, files in self.config.get("weights", {}).items():
            if method not in self.methods:
                if method in self.skipped:
                    continue
                raise ConfigError(f"weights.{method}: no such method among {sorted(self.methods)}")
            declared = self.methods[method].weights
            for name, value in files.items():
                where = f"weights.{method}.{name}"
                if name not in declared:
                    raise ConfigError(f"{where}: method {method!r} declares no weight {name!r} "
                                      f"(it declares {sorted(declared) or 'none'})")
                path = Path(expand_path(value, where)).resolve()
                if not path.is_file():
                    raise ConfigError(f"{where}: {path}: no such file")
                stat = path.stat()
                given.setdefault(method, {})[name] = {"path": str(path), "size": stat.st_size,
                                                      "mtime_ns": stat.st_mtime_ns}
        return given

    def evaluation(self) -> dict[str, Any]:
        """The evaluation settings: an argument of the evaluate rules, not part of any run."""
        return dict(self.config["evaluation"])

    def render_context(self) -> dict[str, Any]:
        """What the renderer needs beyond the run folders: the methods' display fields, dataset labels and the
        methods skipped here. A parameter of the render rule, so changing a label re-renders (and retrains
        nothing)."""
        return {
            "methods": {name: info.display() for name, info in self._chosen.items()},
            "datasets": {name: {"kind": ds["kind"], "pair": ds.get("pair")} for name, ds in self.datasets.items()},
            "skipped": dict(self.skipped),
        }

    def preprocess_settings(self, dataset: str) -> dict[str, Any]:
        ds = self.datasets[dataset]
        keys = ["kind", "source", "split_fractions", "split_seed"]
        keys += (["modalities", "slice_size", "keep", "label_convention"] if ds["kind"] == "brats"
                 else ["anatomical", "functional", "size", "on_mismatch"])
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


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/<name>``), keeping the referring node's own keys."""
    ref = schema.get("$ref")
    if not ref:
        return schema
    target = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}


def _fill_defaults(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None) -> None:
    """Insert schema defaults, also inside ``additionalProperties`` maps (jsonschema alone never fills).

    ``training`` sections keep only what the config writes: a run resolves them level by level
    (``Plan.training``), and a filled-in default would hide a method's own default.
    """
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key == "training":
            instance.setdefault(key, {})
            continue
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(schema.get("properties", {})):
            _fill_defaults(instance[key], extra, root)


_SCALARS = {"integer": int, "number": float, "boolean": lambda t: {"true": True, "false": False}[t.lower()],
            "null": lambda t: {"null": None, "~": None}[t.lower()]}


def _coerce(value: Any, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Snakemake's ``--config key=[0, 1]`` reads the items of lists and maps as strings (YAML's base loader):
    a string where the schema wants a number, a boolean or null becomes one when it reads as one."""
    schema = _resolve(schema, root)
    if isinstance(value, str):
        types = schema.get("type", [])
        for kind in ([types] if isinstance(types, str) else types):
            if kind in _SCALARS:
                try:
                    return _SCALARS[kind](value.strip())
                except (KeyError, ValueError):
                    continue
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce(v, schema["items"], root) for v in value]
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _coerce(v, properties[k], root) if k in properties
                else _coerce(v, extra, root) if isinstance(extra, dict) else v for k, v in value.items()}
    return value


def validate_config(config: dict[str, Any], schema_path: Path | str = SCHEMA_PATH) -> dict[str, Any]:
    """Validate ``config`` against the workflow schema, fill its defaults, and return it.

    Errors name the offending key path and the rule it breaks.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    config = _coerce(copy.deepcopy(config), schema, schema)
    _fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}" for e in errors]
        raise ConfigError("invalid workflow config:\n" + "\n".join(lines))
    return config


def _validate_node(values: dict[str, Any], node: dict[str, Any], root: dict[str, Any], prefix: str,
                   what: str) -> dict[str, Any]:
    """``values`` checked against ``node``, a part of the schema ``root``, with its defaults filled."""
    import jsonschema

    schema = {**_resolve(node, root), "$defs": root.get("$defs", {})}
    values = copy.deepcopy(values)
    _fill_defaults(values, schema, root)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(values), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join([prefix, *map(str, e.absolute_path)])}: {e.message}" for e in errors]
        raise ConfigError(f"invalid {what}:\n" + "\n".join(lines))
    return values


def validate_section(values: dict[str, Any], section: str, schema_path: Path | str = SCHEMA_PATH) -> dict[str, Any]:
    """One section of the workflow config (e.g. ``evaluation`` given on the command line), checked and filled."""
    root = _load_schema(schema_path)
    return _validate_node(values, root["properties"][section], root, section, f"{section} settings")


def validate_dataset(settings: dict[str, Any], schema_path: Path | str = SCHEMA_PATH) -> dict[str, Any]:
    """The settings the preprocess command gets (``Plan.preprocess_settings``: a dataset's entry and its raw
    folder ``raw``), checked as the plan checks a dataset and filled."""
    if not isinstance(settings.get("raw"), str):
        raise ConfigError("invalid dataset settings:\n  settings.raw: the raw folder is missing")
    root = _load_schema(schema_path)
    entry = {k: v for k, v in settings.items() if k != "raw"}
    values = _validate_node(entry, root["properties"]["datasets"]["additionalProperties"], root, "settings",
                            "dataset settings")
    problems = dataset_problems("settings", values, None if values["source"] == "synthetic" else settings["raw"],
                                raw_key="raw")
    if problems:
        raise ConfigError("invalid dataset settings:\n" + "\n".join(f"  {p}" for p in problems))
    return {**values, "raw": settings["raw"]}
