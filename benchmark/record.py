"""The typed run record: what determines one trained result, from the plan to the tables.

A run is one method (or one of its Table 3 variants) trained on one dataset with one seed. The workflow's plan
resolves it (``benchmark.workflow.Plan.record``) and writes it to ``<run dir>/config.json``; the engines train
from it, trained-run loading, evaluation and inference rebuild the networks from it, and the renderer reads it
back to place the run in the tables. It holds only what determines the trained result, so evaluation settings and
display labels (which come from the method's declaration) can change without retraining anything.

How a run is trained and scored is its ``pipeline``, decided by the method's kind and the dataset:

| pipeline       | when                                                   | rules                                     |
|----------------|--------------------------------------------------------|-------------------------------------------|
| ``fusion``     | a fusion or joint method on a paired dataset           | train -> fuse test -> fusion scores       |
| ``disjoint``   | a fusion method on BraTS, or a joint method whose      | train -> fuse train/val/test -> shared    |
|                | ``bilevel`` hyper-parameter is off (Table 3 baseline)  | follower on the fused store -> Dice       |
| ``joint``      | a joint method on BraTS (bi-level leader + follower)   | train -> fuse test -> Dice                |
| ``segmentation`` | a multi-channel segmentation method on BraTS         | train -> Dice                             |
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

PIPELINES = ("fusion", "disjoint", "joint", "segmentation")
FUSED_STORE = "fused_store"  # <run dir>/fused_store/{split}.h5: the run's fused images, made once
FOLLOWER_DIR = "follower"  # <run dir>/follower/: the shared follower of a disjoint pipeline


class RecordError(ValueError):
    """A run record file is missing, malformed or inconsistent (the message names the file)."""


def fused_splits(pipeline: str) -> tuple[str, ...]:
    """The store splits a pipeline fuses: all three for the follower of a disjoint pipeline, else the test split."""
    return {"disjoint": ("train", "val", "test"), "segmentation": ()}.get(pipeline, ("test",))


def pipeline_of(kind: str, dataset_kind: str, bilevel: bool = True) -> str:
    """How a method of ``kind`` is trained and scored on a dataset of ``dataset_kind`` (see the module doc)."""
    if kind == "multichannel":
        return "segmentation"
    if dataset_kind != "brats":
        return "fusion"
    return "joint" if kind == "joint" and bilevel else "disjoint"


@dataclass(frozen=True)
class FollowerConfig:
    """The shared segmentation follower: its network and its training recipe (identical for every pipeline)."""

    network: dict[str, Any]
    training: dict[str, Any]


@dataclass(frozen=True)
class FollowerRun:
    """``follower/config.json`` of a disjoint pipeline: the shared follower trained on the run's fused store.

    Kept apart from the fusion method's ``config.json`` so that changing the follower retrains the follower only.
    """

    run: str
    seed: int
    follower: FollowerConfig

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "follower record") -> "FollowerRun":
        try:
            return cls(run=str(values["run"]), seed=int(values["seed"]), follower=FollowerConfig(**values["follower"]))
        except (KeyError, TypeError, ValueError) as err:
            raise RecordError(f"{where}: not a follower record ({type(err).__name__}: {err})") from err

    def write(self, path: Path | str) -> Path:
        from .atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path | str) -> "FollowerRun":
        return cls.from_dict(read_json(path), where=str(path))


@dataclass(frozen=True)
class RunConfig:
    """One run's ``config.json``: identity, resolved hyper-parameters and training settings, store settings."""

    dataset: str
    dataset_kind: str
    method: str
    kind: str
    variant: str | None
    seed: int
    pipeline: str
    hparams: dict[str, Any]
    training: dict[str, Any]
    data: dict[str, Any]
    follower: FollowerConfig | None = None
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise RecordError(f"run {self.path}: pipeline must be one of {PIPELINES}, got {self.pipeline!r}")
        if (self.pipeline == "joint") != (self.follower is not None):
            raise RecordError(f"run {self.path}: the follower's settings belong to joint pipelines only "
                              "(a disjoint pipeline's follower has its own record, follower/config.json)")

    @property
    def run(self) -> str:
        """The run's name: the method, or ``<method>-<variant>`` for an ablation variant."""
        return self.method if self.variant is None else f"{self.method}-{self.variant}"

    @property
    def path(self) -> str:
        """Where the run lives below the results folder."""
        return f"{self.dataset}/{self.run}/seed{self.seed}"

    @property
    def fuses(self) -> bool:
        return self.pipeline != "segmentation"

    @property
    def labelled(self) -> bool:
        return self.dataset_kind == "brats"

    @property
    def in_channels(self) -> int:
        """Source channels of the store (the configured modalities; paired stores hold two)."""
        return len(self.data.get("modalities") or ()) or 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "run record") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("dataset", "dataset_kind", "method", "kind", "seed", "pipeline") if k not in values]
        if missing:
            raise RecordError(f"{where}: missing field(s) {', '.join(missing)}")
        unknown = set(values) - known
        if unknown:
            raise RecordError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        values = dict(values)
        if values.get("follower") is not None:
            values["follower"] = FollowerConfig(**values["follower"])
        try:
            values["seed"] = int(values["seed"])
            return cls(**{**{"variant": None, "hparams": {}, "training": {}, "data": {}}, **values})
        except (TypeError, ValueError) as err:
            raise RecordError(f"{where}: {err}") from err

    def write(self, path: Path | str) -> Path:
        from .atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, path: Path | str) -> "RunConfig":
        return cls.from_dict(read_json(path), where=str(path))

    @classmethod
    def of_run_dir(cls, run_dir: Path | str) -> "RunConfig":
        """The record of a run folder (its ``config.json``)."""
        return cls.read(Path(run_dir) / "config.json")


def read_json(path: Path | str) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or malformed file is a ``RecordError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: malformed JSON ({err})") from err
    if not isinstance(value, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
