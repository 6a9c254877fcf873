"""Reading run directories (`results/<dataset>/<run>/seed<k>/`) into records the tables and figures share.

A run is identified by its `config.json` (`benchmark.record.RunConfig`); its display fields (row label, the
paper's row name, Table 3 label and order) come from the method's declaration, read without importing it, and
dataset labels (Table 2's pair) from the workflow's context. A run may have failed or be unfinished: every
score file is optional and a missing one stays `None`, so the renderers can show "missing" instead of a number.
A missing or malformed `config.json`, or a score file without its required columns, is an error that names the
file: rendering silently around a broken file would hide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from metrics.fusion import METRICS as FUSION_METRICS
from metrics.segmentation import TABLE_COLUMNS as SEG_METRICS

from ..methods import MethodInfo, discover_methods
from ..record import FOLLOWER_DIR, RecordError, RunConfig, read_json

# Table 1 groups in the paper's order; the group names are those of paper_tables/table1_segmentation.csv.
GROUP_BY_KIND = {"fusion": "disjoint", "multichannel": "multichannel", "joint": "proposed"}
GROUP_ORDER = ("disjoint", "multichannel", "proposed")
FROM_SCRATCH = " (from scratch)"


@dataclass
class RunRecord:
    """One seed of one run: its record, its method's declaration and whichever result files exist."""

    path: Path
    config: RunConfig
    info: MethodInfo | None = None
    pair: str | None = None
    seg_scores: pd.DataFrame | None = None
    seg_settings: dict | None = None
    fusion_scores: pd.DataFrame | None = None
    fusion_settings: dict | None = None
    train_log: pd.DataFrame | None = None
    examples_path: Path | None = field(default=None)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def variant(self) -> str | None:
        return self.config.variant

    @property
    def run(self) -> str:
        return self.config.run

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def display_name(self) -> str:
        """The method's display name; "(from scratch)" when it declares weights the run was not given."""
        name = self.info.display_name if self.info else self.method
        if self.info and set(self.info.weights) - set(self.config.weights):
            name += FROM_SCRATCH
        return name

    @property
    def paper_name(self) -> str | None:
        return self.info.paper_name if self.info else None

    @property
    def ablation_label(self) -> str | None:
        if self.info is None or (self.variant is not None and self.variant not in self.info.ablations):
            return None
        return self.info.label(self.variant)[0]

    @property
    def ablation_order(self) -> float:
        order = self.info.label(self.variant)[1] if self.ablation_label is not None else None
        return float("inf") if order is None else float(order)

    @property
    def dataset(self) -> str:
        return self.config.dataset

    @property
    def dataset_kind(self) -> str:
        return self.config.dataset_kind

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def is_main(self) -> bool:
        """The method's own run, as opposed to one of its ablation variants."""
        return self.variant is None

    @property
    def group(self) -> str:
        return GROUP_BY_KIND[self.kind]

    @property
    def table1_label(self) -> str:
        """Row name in Table 1: a fusion method on BraTS is a pipeline "fusion + shared segmentation follower"."""
        return f"{self.display_name} + Seg" if self.kind == "fusion" else self.display_name

    @property
    def table1_paper_key(self) -> str | None:
        if self.paper_name is None:
            return None
        return f"{self.paper_name} + Seg" if self.kind == "fusion" else self.paper_name

    @property
    def modalities(self) -> list[str]:
        """Names of the source channels, for figure titles: the configured modalities (BraTS), or the
        anatomical then the functional image (paired stores hold them in that order)."""
        data = self.config.data
        if data.get("modalities"):
            return [str(m) for m in data["modalities"]]
        return [str(data.get("anatomical") or "anatomical"), str(data.get("functional") or "functional")]

    def load_examples(self) -> dict[str, np.ndarray] | None:
        """The example arrays of `examples.npz` (no pickle), or None when the run saved none."""
        if self.examples_path is None:
            return None
        try:
            with np.load(self.examples_path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.examples_path}: cannot read example arrays ({exc})") from exc
        if "name" in arrays:
            arrays["name"] = arrays["name"].astype(str)
        return arrays


def _read_json(path: Path) -> dict | None:
    """An optional JSON sidecar: None when absent; malformed is an error naming the file (``RecordError``)."""
    return read_json(path) if path.is_file() else None


def _read_scores(path: Path, key: str, metrics: Iterable[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={key: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed CSV ({exc})") from exc
    metrics = list(metrics)
    absent = [c for c in (key, *metrics) if c not in frame.columns]
    if absent:
        raise ValueError(f"{path}: missing column(s) {', '.join(absent)}")
    try:
        frame[metrics] = frame[metrics].apply(pd.to_numeric)
    except ValueError as exc:
        raise ValueError(f"{path}: non-numeric score ({exc})") from exc
    return frame


def _read_train_log(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed CSV ({exc})") from exc
    if "epoch" not in frame.columns:
        raise ValueError(f"{path}: missing column epoch")
    return frame


def _run_log(run_dir: Path) -> pd.DataFrame | None:
    """The run's training log; a disjoint pipeline's follower log follows it, its epochs numbered on."""
    logs = [log for log in (_read_train_log(run_dir / "train_log.csv"),
                            _read_train_log(run_dir / FOLLOWER_DIR / "train_log.csv")) if log is not None]
    if len(logs) < 2:
        return logs[0] if logs else None
    first, follower = logs
    offset = int(first["epoch"].max()) + 1 if len(first) else 0
    return pd.concat([first, follower.assign(epoch=follower["epoch"] + offset)], ignore_index=True)


def read_run(run_dir: str | Path, *, methods: dict[str, MethodInfo] | None = None,
             context: dict[str, Any] | None = None) -> RunRecord:
    """Read one seed directory; raises ValueError naming `config.json` when it is missing or malformed.

    ``methods``: declarations by name (default: every discovered method); ``context``: the workflow's dataset
    labels (``{"datasets": {name: {"pair": ...}}}``).
    """
    run_dir = Path(run_dir)
    try:
        config = RunConfig.of_run_dir(run_dir)
    except RecordError as exc:
        raise ValueError(f"{exc} (not a run directory?)") from exc
    if methods is None:
        methods = discover_methods()[0]
    datasets = (context or {}).get("datasets", {})
    examples = run_dir / "examples.npz"
    return RunRecord(
        path=run_dir,
        config=config,
        info=methods.get(config.method),
        pair=datasets.get(config.dataset, {}).get("pair"),
        seg_scores=_read_scores(run_dir / "seg_scores.csv", "patient", SEG_METRICS),
        seg_settings=_read_json(run_dir / "seg_scores.json"),
        fusion_scores=_read_scores(run_dir / "fusion_scores.csv", "name", FUSION_METRICS),
        fusion_settings=_read_json(run_dir / "fusion_scores.json"),
        train_log=_run_log(run_dir),
        examples_path=examples if examples.is_file() else None,
    )


def method_declarations(context: dict[str, Any] | None = None) -> dict[str, MethodInfo]:
    """The methods' display fields: the workflow's context when it has them, else every discovered method."""
    if (context or {}).get("methods"):
        return {name: MethodInfo.from_display(name, d) for name, d in context["methods"].items()}
    return discover_methods()[0]


def collect_runs(run_dirs: Iterable[str | Path], context: dict[str, Any] | None = None, *,
                 methods: dict[str, MethodInfo] | None = None) -> list[RunRecord]:
    """Read every seed directory, keeping the given order; the same (dataset, run, seed) twice is an error.

    ``methods``: the declarations that give display fields (default: the context's, else every discovered method).
    """
    records: list[RunRecord] = []
    seen: dict[tuple, Path] = {}
    methods = method_declarations(context) if methods is None else methods
    for run_dir in dict.fromkeys(Path(d).resolve() for d in run_dirs):
        record = read_run(run_dir, methods=methods, context=context)
        key = (record.dataset, record.run, record.seed)
        if key in seen:
            raise ValueError(f"{run_dir / 'config.json'}: same dataset/run/seed {key} as {seen[key] / 'config.json'}")
        seen[key] = run_dir
        records.append(record)
    return records


def group_runs(records: Iterable[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """Seeds of each (dataset, run), seeds ascending, runs in order of first appearance."""
    runs: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        runs.setdefault((record.dataset, record.run), []).append(record)
    return {key: sorted(seeds, key=lambda r: r.seed) for key, seeds in runs.items()}


def table1_sort_key(record: RunRecord) -> tuple:
    """Paper order of the groups (disjoint, multi-channel, proposed), then by name."""
    return GROUP_ORDER.index(record.group), record.table1_label.casefold()


def reference_method(records: Iterable[RunRecord], requested: str | None = None) -> str | None:
    """The method that p-values compare against: the requested one, else the first joint main run given."""
    records = list(records)
    if requested is not None:
        if not any(r.method == requested for r in records):
            raise ValueError(f"reference method {requested!r} is not among the runs")
        return requested
    return next((r.method for r in records if r.kind == "joint" and r.is_main), None)
