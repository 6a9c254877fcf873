"""Method plugins: discovery without imports, loading, and the base classes of the contract.

A method is one file ``<name>.py`` in ``methods/`` (or in a folder listed in ``$FUSE4SEG_METHOD_DIRS``) defining
``class Method``. The workflow plans its jobs from ``discover_methods``, which reads the class's literal attributes
with ``ast``, so neither torch nor the method's own imports are needed to plan; ``load_method`` imports the file
when a job runs, and a method that fails to import fails its own jobs only.

A method owns its recipe. The base classes below give every kind a default recipe (AdamW with one cosine
schedule, the settings of the config's ``training`` section); a method overrides what it needs:

- ``networks()``: the modules saved in ``model.safetensors`` and rebuilt to use the trained run;
- ``stages(ctx, nets)``: the training recipe, a list of ``benchmark.training.loop.Stage`` (each epoch is
  checkpointed, logged and resumable); ``ctx`` (``benchmark.training.context.TrainContext``) gives the data,
  the device, AMP, the optimiser step and the run's resolved settings;
- ``configure_optimizer(module, ctx, lr)``: the optimiser of the default recipe;
- ``finish(ctx, nets)``: after the last epoch (e.g. keep an EMA's weights);
- fusion methods: ``fuse(nets, a, b)`` (run once per slice into a fused store) and ``fusion_loss(model, a, b,
  epoch=, step=)`` of the default recipe; segmentation methods: ``segment(nets, images)``.

Settings come from two places. ``hyperparameters`` (full size; ``test_config`` shrinks them for the synthetic
default) belong to the method alone. ``training`` holds the method's defaults for keys of the workflow's
``training`` section; a run resolves them, lowest first, as: the schema's defaults, the method's ``training``, the
config's ``training`` (keys written there), ``datasets.<name>.training``, ``method_training.<method>``. Keys of the
shared segmentation follower (``FOLLOWER_KEYS``) are never a method's to change: every pipeline segments with the
same follower and the same follower recipe.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the methods themselves, never at planning time
    import torch

    from .record import RunConfig
    from .training.context import TrainContext
    from .training.loop import Stage

KINDS = ("fusion", "multichannel", "joint")
DATASET_KINDS = ("brats", "paired")
METHODS_DIR = Path(__file__).resolve().parent.parent / "methods"
METHOD_DIRS_ENV = "FUSE4SEG_METHOD_DIRS"
# Settings of the shared segmentation follower: the same for every pipeline, so no method may change them.
FOLLOWER_KEYS = ("follower_lr", "warmup_epochs", "bilevel_epochs", "class_weights", "dice_smooth")

# Class attributes read statically; every one must be a Python literal in the method file.
_LITERAL_ATTRS = (
    "kind",
    "display_name",
    "paper_name",
    "datasets",
    "hyperparameters",
    "test_config",
    "training",
    "requires",
    "accelerators",
    "weights",
    "reference",
    "ablations",
    "full_label",
)


class MethodError(Exception):
    """A method file is missing, malformed or breaks the contract (the message names the file)."""


def method_dirs() -> list[Path]:
    """``methods/`` first, then every folder of ``$FUSE4SEG_METHOD_DIRS`` (``os.pathsep``-separated)."""
    extra = [Path(p) for p in os.environ.get(METHOD_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    return [METHODS_DIR, *extra]


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
    training: dict[str, Any] = field(default_factory=dict)
    requires: dict[str, str] = field(default_factory=dict)
    accelerators: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)
    full_label: str | None = None

    def runs_on(self, dataset_kind: str) -> bool:
        if self.kind == "multichannel" and dataset_kind != "brats":
            return False  # segmentation-only methods have nothing to fuse on label-free pairs
        return dataset_kind in self.datasets

    def missing_requirements(self) -> list[str]:
        """Requirements (``requires``: module -> pip requirement) that cannot be imported here, as pip specs."""
        return [spec for module, spec in self.requires.items() if importlib.util.find_spec(module) is None]

    def missing_reason(self) -> str | None:
        """Why the method cannot run in this environment, or None."""
        missing = self.missing_requirements()
        if not missing:
            return None
        return f"needs {', '.join(missing)} (pip install {' '.join(repr(m) for m in missing)})"

    def display(self) -> dict[str, Any]:
        """The declaration's display fields (what the tables and figures show), as JSON-ready values."""
        return {"kind": self.kind, "display_name": self.display_name, "paper_name": self.paper_name,
                "weights": self.weights, "ablations": self.ablations, "full_label": self.full_label}

    @classmethod
    def from_display(cls, name: str, values: dict[str, Any]) -> "MethodInfo":
        return cls(name=name, path=Path(f"{name}.py"), **values)

    def label(self, variant: str | None) -> tuple[str | None, int | None]:
        """Table 3 label and order of the method's main run (``variant`` None) or of one of its variants."""
        if variant is None:
            return (self.full_label, len(self.ablations)) if self.ablations else (None, None)
        spec = self.ablations[variant]
        return spec["label"], spec.get("order", 0)


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


def _check_str_map(path: Path, values: dict[str, Any], attr: str) -> dict[str, str]:
    mapping = values.get(attr, {})
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise MethodError(f"{path}: Method.{attr} must map names to descriptions (strings)")
    return dict(mapping)


def _check_reference(path: Path, reference: Any) -> dict[str, Any]:
    """``reference``: the official code (``repository``, ``commit``), its full-size ``parameters`` and ``notes``."""
    if not isinstance(reference, dict) or set(reference) - {"repository", "commit", "parameters", "notes"}:
        raise MethodError(f"{path}: Method.reference must be a dict with repository, commit, parameters, notes")
    count = reference.get("parameters")
    if count is not None and not (isinstance(count, int) and count > 0):
        raise MethodError(f"{path}: Method.reference['parameters'] must be a positive int or None")
    return dict(reference)


def read_method_info(path: Path) -> MethodInfo:
    """Read one method file's declaration statically and validate it."""
    path = Path(path)
    values = _class_literals(path)
    kind = values.get("kind")
    if kind not in KINDS:
        raise MethodError(f"{path}: Method.kind must be one of {KINDS}, got {kind!r}")
    datasets = tuple(values.get("datasets", DATASET_KINDS))
    unknown = set(datasets) - set(DATASET_KINDS)
    if unknown:
        raise MethodError(f"{path}: Method.datasets has unknown dataset kinds {sorted(unknown)}")
    hyper = values.get("hyperparameters", {})
    extra = set(values.get("test_config", {})) - set(hyper)
    if extra:
        raise MethodError(f"{path}: Method.test_config sets unknown hyper-parameters {sorted(extra)}")
    training = values.get("training", {})
    if not isinstance(training, dict):
        raise MethodError(f"{path}: Method.training must be a dict of training settings")
    owned = sorted(set(training) & set(FOLLOWER_KEYS))
    if owned:
        raise MethodError(f"{path}: Method.training may not set {owned}: they belong to the shared follower")
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
        name=path.stem,
        path=path,
        kind=kind,
        display_name=values.get("display_name", path.stem),
        paper_name=values.get("paper_name"),
        datasets=datasets,
        hyperparameters=dict(hyper),
        test_config=dict(values.get("test_config", {})),
        training=dict(training),
        requires=_check_str_map(path, values, "requires"),
        accelerators=_check_str_map(path, values, "accelerators"),
        weights=_check_str_map(path, values, "weights"),
        reference=_check_reference(path, values.get("reference", {})),
        ablations=dict(ablations),
        full_label=values.get("full_label"),
    )


def discover_methods(dirs: list[Path] | Path | str | None = None) -> tuple[dict[str, MethodInfo], dict[str, str]]:
    """Return ``(methods, problems)``: the valid methods by name and, by name, why the others were skipped."""
    if dirs is None:
        dirs = method_dirs()
    elif isinstance(dirs, (str, Path)):
        dirs = [Path(dirs)]
    found: dict[str, MethodInfo] = {}
    problems: dict[str, str] = {}
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.py")):
            if path.name.startswith("_"):
                continue
            if path.stem in found:
                problems[path.stem] = f"{path}: a method of this name is already defined in {found[path.stem].path}"
                continue
            try:
                found[path.stem] = read_method_info(path)
            except MethodError as err:
                problems[path.stem] = str(err)
    return found, problems


def find_method(name: str, dirs: list[Path] | Path | str | None = None) -> MethodInfo:
    found, problems = discover_methods(dirs)
    if name in found:
        return found[name]
    if name in problems:
        raise MethodError(problems[name])
    searched = ", ".join(str(d) for d in (method_dirs() if dirs is None else [dirs] if isinstance(dirs, (str, Path)) else dirs))
    raise MethodError(f"no method file {name}.py in {searched}")


def load_method(name: str, hparams: dict[str, Any] | None = None, dirs: list[Path] | Path | str | None = None, *,
                record: "RunConfig | None" = None):
    """Import the method file ``<name>.py`` and return its ``Method`` with ``hparams`` applied.

    ``record`` (the run's ``RunConfig``) gives the method the run's settings: its in-channels, given weight files.
    """
    info = find_method(name, dirs)
    missing = info.missing_reason()
    if missing:
        raise MethodError(f"{info.path}: {missing}")
    path = info.path
    module_name = f"methods.{name}" if path.parent.resolve() == METHODS_DIR else f"_plugin_{name}"
    try:
        if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(path):
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
    return cls(hparams, name=name, record=record)


class MethodBase(ABC):
    """Shared behaviour: hyper-parameters and their validation, the run record, the optimiser of the default recipe."""

    kind: str = ""
    display_name: str = ""
    paper_name: str | None = None
    datasets: tuple[str, ...] = DATASET_KINDS
    hyperparameters: dict[str, Any] = {}
    test_config: dict[str, Any] = {}
    training: dict[str, Any] = {}
    requires: dict[str, str] = {}
    accelerators: dict[str, str] = {}
    weights: dict[str, str] = {}
    reference: dict[str, Any] = {}

    def __init__(self, hparams: dict[str, Any] | None = None, *, name: str | None = None,
                 record: "RunConfig | None" = None):
        self.name = name or type(self).__module__.rsplit(".", 1)[-1]
        overrides = dict(hparams or {})
        unknown = set(overrides) - set(self.hyperparameters)
        if unknown:
            raise MethodError(
                f"method {self.name!r}: unknown hyper-parameters {sorted(unknown)}; "
                f"known: {sorted(self.hyperparameters)}"
            )
        self.hparams = {**self.hyperparameters, **overrides}
        self.record = record

    def weight_file(self, name: str) -> Path | None:
        """The local file given in the config for the declared weight ``name`` (None: train from scratch)."""
        if name not in self.weights:
            raise MethodError(f"method {self.name!r}: {name!r} is not among its declared weights {sorted(self.weights)}")
        given = (self.record.weights if self.record is not None else {}).get(name)
        return Path(given["path"]) if given else None

    @abstractmethod
    def networks(self) -> dict[str, "torch.nn.Module"]:
        """The modules of a trained run, by name: trained, saved to ``model.safetensors``, rebuilt to use it."""

    def configure_optimizer(self, module: "torch.nn.Module", ctx: "TrainContext", lr: float) -> "torch.optim.Optimizer":
        """The default recipe's optimiser: AdamW with the run's weight decay."""
        import torch

        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=ctx.training.weight_decay)

    def stages(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"]) -> list["Stage"]:
        """The training recipe; no stage means nothing to train."""
        return []

    def finish(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"]) -> None:
        """Called once after the last epoch, before the weights are saved."""


class FusionMethod(MethodBase, ABC):
    """A fusion method: two single-channel sources in [0, 1] -> one fused channel in [0, 1].

    Default recipe: if ``trainable``, ``training.fusion_epochs`` epochs of ``fusion_loss`` with AdamW at
    ``training.fusion_lr`` and one cosine schedule. On BraTS its fused images train the shared segmentation
    follower (a disjoint pipeline); on paired datasets they are scored with the fusion metrics.
    """

    kind = "fusion"
    trainable: bool = True

    @abstractmethod
    def build(self) -> "torch.nn.Module":
        """Return a ``torch.nn.Module`` mapping ``(a, b)`` (B, 1, H, W) to the fused image (B, 1, H, W)."""

    def networks(self) -> dict[str, "torch.nn.Module"]:
        return {"fusion": self.build()}

    def fuse(self, nets: dict[str, "torch.nn.Module"], a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        """Fused images (B, 1, H, W) in [0, 1] of a batch of sources; called once per slice of a store."""
        return nets["fusion"](a, b)

    def fusion_loss(self, model: "torch.nn.Module", a: "torch.Tensor", b: "torch.Tensor", *, epoch: int,
                    step: int) -> tuple["torch.Tensor", dict[str, float]]:
        """Return ``(loss, parts)`` of the method's own objective (the default recipe's loss)."""
        raise MethodError(f"method {self.name!r} is trainable but defines no fusion_loss")

    def stages(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"]) -> list["Stage"]:
        return self._fusion_recipe(ctx, nets, ctx.training.fusion_lr)

    def _fusion_recipe(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"], lr: float) -> list["Stage"]:
        """``fusion_epochs`` epochs of ``fusion_loss`` on the (only) network, AdamW at ``lr``, one cosine."""
        from .training.stages import fusion_stage

        epochs = ctx.training.fusion_epochs
        if not self.trainable or epochs == 0:
            return []
        (name, model), = nets.items()
        optimizer = ctx.track(self.configure_optimizer(model, ctx, lr), name)
        return [fusion_stage(ctx, "fusion", model, optimizer, self.fusion_loss, epochs, lr)]


class MultiChannelMethod(MethodBase, ABC):
    """A segmentation network on the stacked sources (direct multi-channel segmentation).

    Default recipe: the shared follower's (AdamW at ``training.follower_lr``, ``warmup_epochs + bilevel_epochs``
    epochs, one cosine schedule, CE + weighted Dice).
    """

    kind = "multichannel"

    @abstractmethod
    def build(self, in_channels: int, num_classes: int) -> "torch.nn.Module":
        """Return a ``torch.nn.Module`` mapping (B, in_channels, H, W) to logits (B, num_classes, H, W)."""

    @property
    def in_channels(self) -> int:
        return self.record.in_channels if self.record is not None else 2

    def networks(self) -> dict[str, "torch.nn.Module"]:
        from metrics.segmentation import N_CLASSES

        return {"segmenter": self.build(self.in_channels, N_CLASSES)}

    def segment(self, nets: dict[str, "torch.nn.Module"], images: "torch.Tensor") -> "torch.Tensor":
        """Logits (B, classes, H, W) of a batch of stacked sources (B, in_channels, H, W)."""
        return nets["segmenter"](images)

    def stages(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"]) -> list["Stage"]:
        from .training.stages import segmentation_stage

        model = nets["segmenter"]
        lr = ctx.training.follower_lr
        optimizer = ctx.track(self.configure_optimizer(model, ctx, lr), "segmenter")
        epochs = ctx.training.warmup_epochs + ctx.training.bilevel_epochs
        return [segmentation_stage(ctx, "segmentation", lambda x: self.segment(nets, x), model, optimizer,
                                   lambda batch: batch["images"].to(ctx.device), epochs, lr)]


class JointMethod(FusionMethod, ABC):
    """Fusion trained through segmentation (Fuse4Seg and its variants); a fusion method on every other pipeline.

    On BraTS with ``bilevel`` on, the framework adds the shared follower (``nets["follower"]``) and the default
    recipe is the paper's Algorithm 1 (``benchmark.training.bilevel``). With ``bilevel`` off (the Table 3
    baseline) and on paired datasets the leader is a fusion method trained on ``physical_loss`` alone.
    """

    kind = "joint"
    ablations: dict[str, dict[str, Any]] = {}
    full_label: str | None = None

    @abstractmethod
    def build_leader(self) -> "torch.nn.Module":
        """Return the fusion leader: ``(a, b) -> output`` whose ``.fused`` is (B, 1, H, W) in [0, 1]."""

    @abstractmethod
    def physical_terms(self, leader_output: Any, a: "torch.Tensor", b: "torch.Tensor") -> dict[str, tuple]:
        """The leader's physical regularisers, ``name -> (weight, loss)``; used with and without bi-level."""

    def physical_loss(self, leader_output: Any, a: "torch.Tensor", b: "torch.Tensor") -> tuple["torch.Tensor", dict]:
        """``(sum of weight x loss, {name: loss value})``; every term is logged, a zero weight included."""
        terms = self.physical_terms(leader_output, a, b)
        total = sum(weight * loss for weight, loss in terms.values())
        return total, {name: loss.item() for name, (_, loss) in terms.items()}

    def prior(self, a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        """The deterministic physical prior (paper 3.2): the follower warms up on it. The average of the sources;
        a method whose leader normalises its output overrides this to give the prior in the same domain, so that at
        the first bi-level step the follower sees the distribution it was warmed up on."""
        return 0.5 * (a + b)

    @property
    def bilevel(self) -> bool:
        """False turns the method into its disjoint baseline: physical losses only, then the follower."""
        return bool(self.hparams.get("bilevel", True))

    @property
    def semantic_weight(self) -> float:
        """Weight of the segmentation loss in the leader's objective (hyper-parameter ``w_seg``, default 1)."""
        return float(self.hparams.get("w_seg", 1.0))

    def build(self) -> "torch.nn.Module":
        return self.build_leader()

    def networks(self) -> dict[str, "torch.nn.Module"]:
        return {"leader": self.build_leader()}

    def fuse(self, nets: dict[str, "torch.nn.Module"], a: "torch.Tensor", b: "torch.Tensor") -> "torch.Tensor":
        return nets["leader"](a, b).fused

    def fusion_loss(self, model, a, b, *, epoch: int, step: int):
        return self.physical_loss(model(a, b), a, b)

    def stages(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"]) -> list["Stage"]:
        from .training.bilevel import bilevel_stages, leader_monitor
        from .training.stages import fusion_stage

        if "follower" in nets:
            return bilevel_stages(self, ctx, nets)
        # paired data or the disjoint baseline: a fusion method on the physical losses, at the leader's rate
        if ctx.training.fusion_epochs == 0:
            return []
        leader, lr = nets["leader"], ctx.training.leader_lr
        optimizer = ctx.track(self.configure_optimizer(leader, ctx, lr), "leader")
        return [fusion_stage(ctx, "fusion", leader, optimizer, self.fusion_loss, ctx.training.fusion_epochs, lr,
                             monitor=leader_monitor(self, ctx))]

    def finish(self, ctx: "TrainContext", nets: dict[str, "torch.nn.Module"]) -> None:
        ema = ctx.state.emas.get("leader")
        if ema is not None:
            ema.copy_to(nets["leader"])  # evaluation uses the EMA leader (paper Eq. 4)
