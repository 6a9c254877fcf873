"""Reading run directories (`results/<dataset>/<run>/seed<k>/`) into records the tables and figures share.

A run may have failed or be unfinished: every score file is optional and a missing one stays `None`, so the
renderers can show "missing" instead of a number. A missing or malformed `run.json`, or a score file without its
required columns, is an error that names the file: rendering silently around a broken file would hide it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

KINDS = ("fusion", "multichannel", "joint")
SEG_METRICS = ("NCR_dice", "NCR_iou", "ED_dice", "ED_iou", "ET_dice", "ET_iou", "mean_dice", "mean_iou")
FUSION_METRICS = ("EN", "SD", "MI", "PSNR", "SF", "Qabf", "SSIM")
# Table 1 groups in the paper's order; the group names are those of paper_tables/table1_segmentation.csv.
GROUP_BY_KIND = {"fusion": "disjoint", "multichannel": "multichannel", "joint": "proposed"}
GROUP_ORDER = ("disjoint", "multichannel", "proposed")
_REQUIRED_META = ("method", "kind", "dataset", "seed")


@dataclass
class RunRecord:
    """One seed of one run: its `run.json` fields and whichever result files exist (None when absent)."""

    path: Path
    meta: dict
    seg_scores: pd.DataFrame | None = None
    seg_settings: dict | None = None
    fusion_scores: pd.DataFrame | None = None
    fusion_settings: dict | None = None
    train_log: pd.DataFrame | None = None
    examples_path: Path | None = field(default=None)

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def variant(self) -> str | None:
        return self.meta.get("variant")

    @property
    def run(self) -> str:
        return self.meta.get("run") or (f"{self.method}-{self.variant}" if self.variant else self.method)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def display_name(self) -> str:
        return self.meta.get("display_name") or self.run

    @property
    def paper_name(self) -> str | None:
        return self.meta.get("paper_name")

    @property
    def ablation_label(self) -> str | None:
        return self.meta.get("ablation_label")

    @property
    def ablation_order(self) -> float:
        order = self.meta.get("ablation_order")
        return float("inf") if order is None else float(order)

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def dataset_kind(self) -> str:
        return self.meta.get("dataset_kind") or ("paired" if self.pair else "brats")

    @property
    def pair(self) -> str | None:
        return self.meta.get("pair")

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

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
        """Names of the source channels, for figure titles (config first, then the dataset's conventions)."""
        configured = (self.meta.get("config") or {}).get("modalities")
        if configured:
            return [str(m) for m in configured]
        if self.pair:
            # Channel 0 is the anatomical image, channel 1 the functional one (DESIGN.md, slice store).
            parts = self.pair.split("-")
            functional = {"SPECT", "PET", "GFP", "CT"}
            return [p for p in parts if p.upper() not in functional] + [p for p in parts if p.upper() in functional]
        return ["T1ce", "FLAIR"]

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
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


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


def read_run(run_dir: str | Path) -> RunRecord:
    """Read one seed directory; raises ValueError naming `run.json` when it is missing or malformed."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise ValueError(f"{meta_path}: missing run.json (not a run directory?)")
    meta = _read_json(meta_path)
    absent = [k for k in _REQUIRED_META if meta.get(k) is None]
    if absent:
        raise ValueError(f"{meta_path}: missing field(s) {', '.join(absent)}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"{meta_path}: kind {meta['kind']!r} is not one of {', '.join(KINDS)}")
    try:
        int(meta["seed"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: seed {meta['seed']!r} is not an integer") from exc
    examples = run_dir / "examples.npz"
    return RunRecord(
        path=run_dir,
        meta=meta,
        seg_scores=_read_scores(run_dir / "seg_scores.csv", "patient", SEG_METRICS),
        seg_settings=_read_json(run_dir / "seg_scores.json"),
        fusion_scores=_read_scores(run_dir / "fusion_scores.csv", "name", FUSION_METRICS),
        fusion_settings=_read_json(run_dir / "fusion_scores.json"),
        train_log=_read_train_log(run_dir / "train_log.csv"),
        examples_path=examples if examples.is_file() else None,
    )


def collect_runs(run_dirs: Iterable[str | Path]) -> list[RunRecord]:
    """Read every seed directory, keeping the given order; the same (dataset, run, seed) twice is an error."""
    records: list[RunRecord] = []
    seen: dict[tuple, Path] = {}
    for run_dir in dict.fromkeys(Path(d).resolve() for d in run_dirs):
        record = read_run(run_dir)
        key = (record.dataset, record.run, record.seed)
        if key in seen:
            raise ValueError(f"{run_dir / 'run.json'}: same dataset/run/seed {key} as {seen[key] / 'run.json'}")
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
