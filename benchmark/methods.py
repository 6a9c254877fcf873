"""Method plugins: discovery without imports, loading, and the base classes of the contract.

A method is one file ``methods/<name>.py`` defining ``class Method``. Snakemake builds its job graph from
``discover_methods``, which reads the class's literal attributes with ``ast`` so that neither torch nor the
method's own imports are needed to plan the work. ``load_method`` imports the file when a job runs; a method
that fails to import fails its own jobs only.

Kinds and how the engines use them:

- ``fusion``: ``build()`` returns a module ``(a, b) -> fused`` (B, 1, H, W) in [0, 1]; ``fusion_loss`` is its
  own objective (ignored when ``trainable`` is False). On BraTS its frozen output trains the shared
  segmentation follower (a disjoint pipeline); on paired datasets its output is scored with fusion metrics.
- ``multichannel``: ``build(in_channels, num_classes)`` returns a segmentation network on stacked sources.
- ``joint``: ``build_leader()`` / ``build_follower()`` for the bi-level engine; ``ablations`` lists the
  Table 3 variants as hyper-parameter overrides of the same code.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("fusion", "multichannel", "joint")
DATASET_KINDS = ("brats", "paired")
METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"

# Class attributes read statically; every one must be a Python literal in the method file.
_LITERAL_ATTRS = (
    "kind",
    "display_name",
    "paper_name",
    "datasets",
    "hyperparameters",
    "test_config",
    "ablations",
    "full_label",
)


class MethodError(Exception):
    """A method file is missing, malformed or breaks the contract (the message names the file)."""


@dataclass(frozen=True)
class MethodInfo:
    """What the workflow needs to know about a method, read without importing it."""

    name: str
    path: Path
    kind: str
    display_name: str
    paper_name: str | None = None
    datasets: tuple[str, ...] = DATASET_KINDS
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    test_config: dict[str, Any] = field(default_factory=dict)
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)
    full_label: str | None = None

    def runs_on(self, dataset_kind: str) -> bool:
        if self.kind == "multichannel" and dataset_kind != "brats":
            return False  # segmentation-only methods have nothing to fuse on label-free pairs
        return dataset_kind in self.datasets


def _class_literals(path: Path) -> dict[str, Any]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as err:
        raise MethodError(f"{path}: syntax error at line {err.lineno}: {err.msg}") from err
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Method":
            values: dict[str, Any] = {}
            for stmt in node.body:
                targets = []
                if isinstance(stmt, ast.Assign):
                    targets, value = stmt.targets, stmt.value
                elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                    targets, value = [stmt.target], stmt.value
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in _LITERAL_ATTRS:
                        try:
                            values[target.id] = ast.literal_eval(value)
                        except ValueError as err:
                            raise MethodError(
                                f"{path}: Method.{target.id} must be a Python literal (line {stmt.lineno})"
                            ) from err
            return values
    raise MethodError(f"{path}: no top-level 'class Method' found")


def read_method_info(path: Path) -> MethodInfo:
    """Read one method file's declaration statically and validate it."""
    path = Path(path)
    values = _class_literals(path)
    name = path.stem
    kind = values.get("kind")
    if kind not in KINDS:
        raise MethodError(f"{path}: Method.kind must be one of {KINDS}, got {kind!r}")
    datasets = tuple(values.get("datasets", DATASET_KINDS))
    unknown = set(datasets) - set(DATASET_KINDS)
    if unknown:
        raise MethodError(f"{path}: Method.datasets has unknown dataset kinds {sorted(unknown)}")
    hyper = values.get("hyperparameters", {})
    for section in ("test_config",):
        extra = set(values.get(section, {})) - set(hyper)
        if extra:
            raise MethodError(f"{path}: Method.{section} sets unknown hyper-parameters {sorted(extra)}")
    ablations = values.get("ablations", {})
    for key, spec in ablations.items():
        if not isinstance(spec, dict) or "label" not in spec:
            raise MethodError(f"{path}: Method.ablations[{key!r}] needs a 'label'")
        extra = set(spec.get("overrides", {})) - set(hyper)
        if extra:
            raise MethodError(f"{path}: Method.ablations[{key!r}] overrides unknown hyper-parameters {sorted(extra)}")
    if ablations and kind != "joint":
        raise MethodError(f"{path}: only joint methods declare ablations")
    return MethodInfo(
        name=name,
        path=path,
        kind=kind,
        display_name=values.get("display_name", name),
        paper_name=values.get("paper_name"),
        datasets=datasets,
        hyperparameters=dict(hyper),
        test_config=dict(values.get("test_config", {})),
        ablations=dict(ablations),
        full_label=values.get("full_label"),
    )


def discover_methods(methods_dir: Path | str = METHODS_DIR) -> tuple[dict[str, MethodInfo], dict[str, str]]:
    """Return ``(methods, problems)``: the valid methods by name and, by name, why the others were skipped."""
    found: dict[str, MethodInfo] = {}
    problems: dict[str, str] = {}
    for path in sorted(Path(methods_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        try:
            found[path.stem] = read_method_info(path)
        except MethodError as err:
            problems[path.stem] = str(err)
    return found, problems


def load_method(name: str, hparams: dict[str, Any] | None = None, methods_dir: Path | str = METHODS_DIR):
    """Import ``methods/<name>.py`` and return an instance of its ``Method`` with ``hparams`` applied."""
    path = Path(methods_dir) / f"{name}.py"
    if not path.is_file():
        raise MethodError(f"{path}: no such method file")
    info = read_method_info(path)
    module_name = f"methods.{name}" if Path(methods_dir).resolve() == METHODS_DIR else f"_plugin_{name}"
    try:
        if module_name in sys.modules:
            module = sys.modules[module_name]
        else:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    except Exception as err:  # any import failure belongs to this method alone
        sys.modules.pop(module_name, None)
        raise MethodError(f"{path}: failed to import: {type(err).__name__}: {err}") from err
    cls = getattr(module, "Method", None)
    if cls is None:
        raise MethodError(f"{path}: defines no 'Method' class")
    base = {"fusion": FusionMethod, "multichannel": MultiChannelMethod, "joint": JointMethod}[info.kind]
    if not issubclass(cls, base):
        raise MethodError(f"{path}: Method of kind {info.kind!r} must subclass benchmark.methods.{base.__name__}")
    return cls(hparams, name=name)


class MethodBase:
    """Shared behaviour: hyper-parameter defaults, overrides and their validation."""

    kind: str = ""
    display_name: str = ""
    paper_name: str | None = None
    datasets: tuple[str, ...] = DATASET_KINDS
    hyperparameters: dict[str, Any] = {}
    test_config: dict[str, Any] = {}

    def __init__(self, hparams: dict[str, Any] | None = None, *, name: str | None = None):
        self.name = name or type(self).__module__.rsplit(".", 1)[-1]
        overrides = dict(hparams or {})
        unknown = set(overrides) - set(self.hyperparameters)
        if unknown:
            raise MethodError(
                f"method {self.name!r}: unknown hyper-parameters {sorted(unknown)}; "
                f"known: {sorted(self.hyperparameters)}"
            )
        self.hparams = {**self.hyperparameters, **overrides}


class FusionMethod(MethodBase, ABC):
    """A fusion method: two single-channel sources in [0, 1] -> one fused channel in [0, 1]."""

    kind = "fusion"
    trainable: bool = True

    @abstractmethod
    def build(self):
        """Return a ``torch.nn.Module`` mapping ``(a, b)`` (B, 1, H, W) to the fused image (B, 1, H, W)."""

    def fusion_loss(self, model, a, b):
        """Return ``(loss, parts)`` of the method's own fusion objective; trainable methods override it."""
        raise MethodError(f"method {self.name!r} is trainable but defines no fusion_loss")


class MultiChannelMethod(MethodBase, ABC):
    """A segmentation network on the stacked sources (direct multi-channel segmentation)."""

    kind = "multichannel"

    @abstractmethod
    def build(self, in_channels: int, num_classes: int):
        """Return a ``torch.nn.Module`` mapping (B, in_channels, H, W) to logits (B, num_classes, H, W)."""


class JointMethod(MethodBase, ABC):
    """Joint fusion + segmentation trained by the bi-level engine (Fuse4Seg and its variants).

    The follower is not the method's to choose: the engine builds the one shared segmentation backbone,
    so that every pipeline of Table 1 segments with identical networks.
    """

    kind = "joint"
    ablations: dict[str, dict[str, Any]] = {}
    full_label: str | None = None

    @abstractmethod
    def build_leader(self):
        """Return the fusion leader: ``(a, b) -> output`` whose ``.fused`` is (B, 1, H, W) in [0, 1]."""

    @abstractmethod
    def physical_loss(self, leader_output, a, b):
        """Return ``(loss, parts)``: the leader's physical regularisers, used with and without bi-level."""

    @property
    def bilevel(self) -> bool:
        """False turns the method into its disjoint baseline: physical losses only, then the follower."""
        return bool(self.hparams.get("bilevel", True))
