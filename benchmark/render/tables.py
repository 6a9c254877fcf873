"""Tables 1-3 of the paper from run directories: tidy CSV, Markdown, LaTeX, and each beside the paper's numbers.

One statistics path (`_summarise`) and one formatting path (`_cell`, `_write_table`) serve all three tables, so a
number means the same thing wherever it appears:

- mean, std: over seeds of the per-seed test mean (patients for segmentation, images for fusion); std ddof = 1;
- ci_low, ci_high: bootstrap 95 % CI over per-patient (per-image) scores, each first averaged over the seeds;
- p_wilcoxon: paired Wilcoxon signed-rank test against the reference method's main run on the same dataset, on
  the same seed-averaged per-patient (per-image) scores, for the row's metric; blank for the reference itself.

A run without the score file is "missing" in every output, never a number.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
from tabulate import tabulate

from metrics.stats import bootstrap_ci, mean_std_over_seeds, paired_wilcoxon

from ..atomic import write_text_atomic
from .runs import (
    FUSION_METRICS,
    GROUP_ORDER,
    SEG_METRICS,
    RunRecord,
    group_runs,
    reference_method,
    table1_sort_key,
)

METRIC_HEADERS = {
    "NCR_dice": "NCR Dice", "NCR_iou": "NCR IoU", "ED_dice": "ED Dice", "ED_iou": "ED IoU",
    "ET_dice": "ET Dice", "ET_iou": "ET IoU", "mean_dice": "Mean Dice", "mean_iou": "Mean IoU",
    "EN": "EN", "SD": "SD", "MI": "MI", "PSNR": "PSNR", "SF": "SF", "Qabf": "Qabf", "SSIM": "SSIM",
}
# The paper's precision: two decimals for the large-valued fusion metrics, three elsewhere.
_DIGITS = {"SD": 2, "PSNR": 2, "SF": 2}
_SETTINGS_FIRST = ("convention", "aggregation", "empty_rule", "label_convention")
MISSING = "missing"


@dataclass(frozen=True)
class TableSpec:
    """What distinguishes the three tables; everything else is shared."""

    stem: str
    number: int
    subject: str
    scores: str  # "seg" or "fusion": which RunRecord score frame and settings sidecar
    metrics: tuple[str, ...]
    unit: str  # the per-row key of the score file
    count_column: str
    block_columns: tuple[str, ...]
    id_columns: tuple[str, ...]  # shown before the metric cells in Markdown / LaTeX
    paper_file: str
    paper_key: str  # the paper CSV's row-name column
    paper_match: tuple[str, ...] = ()  # block columns that must equal the paper's (Table 2: pair)
    with_inference: bool = True  # CI and p columns in Markdown / LaTeX
    label_header: str = "Method"
    datasets: Callable[[list[RunRecord]], set[str]] = field(default=lambda records: {r.dataset for r in records})
    select: Callable[[list[RunRecord]], bool] = field(default=lambda seeds: True)
    label: Callable[[RunRecord], str] = field(default=lambda r: r.display_name)
    paper_row: Callable[[RunRecord], str | None] = field(default=lambda r: r.paper_name)
    sort_key: Callable[[RunRecord], tuple] = field(default=lambda r: ())


def _fusion_datasets(records: list[RunRecord]) -> set[str]:
    """Datasets that get a Table 2 block: paired ones, and BraTS when some run there scored its fused images."""
    return {r.dataset for r in records if r.dataset_kind == "paired" or r.fusion_scores is not None}


TABLE1 = TableSpec(
    stem="table1_segmentation", number=1, subject="Segmentation", scores="seg", metrics=SEG_METRICS,
    unit="patient", count_column="n_patients", block_columns=("dataset",), id_columns=("group", "label"),
    paper_file="table1_segmentation.csv", paper_key="method",
    select=lambda seeds: seeds[0].dataset_kind == "brats" and seeds[0].is_main,
    label=lambda r: r.table1_label, paper_row=lambda r: r.table1_paper_key, sort_key=table1_sort_key,
)
TABLE2 = TableSpec(
    stem="table2_fusion", number=2, subject="Fusion", scores="fusion", metrics=FUSION_METRICS,
    unit="name", count_column="n_images", block_columns=("dataset", "pair"), id_columns=("label",),
    paper_file="table2_fusion_harvard.csv", paper_key="method", paper_match=("pair",), with_inference=False,
    datasets=_fusion_datasets,
    select=lambda seeds: seeds[0].is_main and seeds[0].kind in ("fusion", "joint"),
    sort_key=table1_sort_key,
)
TABLE3 = TableSpec(
    stem="table3_ablation", number=3, subject="Ablation", scores="seg", metrics=SEG_METRICS,
    unit="patient", count_column="n_patients", block_columns=("dataset",), id_columns=("label", "run"),
    paper_file="table3_ablation.csv", paper_key="variant", label_header="Variant",
    select=lambda seeds: seeds[0].dataset_kind == "brats" and seeds[0].ablation_label is not None,
    label=lambda r: r.ablation_label, paper_row=lambda r: r.ablation_label,
    sort_key=lambda r: (r.ablation_order, r.ablation_label.casefold()),
)
TABLES = (TABLE1, TABLE2, TABLE3)


def _title(spec: TableSpec) -> str:
    return f"Table {spec.number}: {spec.subject.lower()}"


@dataclass
class RowSummary:
    """One table row (a run on one dataset) with its statistics per metric."""

    seeds: list[RunRecord]
    label: str
    paper_row: str | None
    stats: dict[str, dict[str, float]]
    n_present: int
    is_reference: bool
    settings: str

    @property
    def first(self) -> RunRecord:
        return self.seeds[0]

    @property
    def status(self) -> str:
        if self.n_present == 0:
            return MISSING
        return "ok" if self.n_present == len(self.seeds) else "partial"


@dataclass
class Block:
    """One dataset (Table 2: dataset and pair) of a table, with the caption line that describes its numbers."""

    key: dict[str, str | None]
    rows: list[RowSummary]
    reference_label: str | None
    reference_run: str | None
    caption: str = ""


def _scores(record: RunRecord, spec: TableSpec) -> pd.DataFrame | None:
    return getattr(record, f"{spec.scores}_scores")


def _settings(record: RunRecord, spec: TableSpec) -> dict | None:
    return getattr(record, f"{spec.scores}_settings")


def _pooled(seeds: list[RunRecord], spec: TableSpec) -> pd.DataFrame | None:
    """Per-patient (per-image) scores averaged over the seeds that have them: the units the CI and test use."""
    frames = [f[[spec.unit, *spec.metrics]] for f in (_scores(r, spec) for r in seeds) if f is not None]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).groupby(spec.unit, sort=True).mean()


def _summarise(seeds: list[RunRecord], spec: TableSpec, reference: pd.DataFrame | None) -> dict[str, dict]:
    """Mean/std over seeds, bootstrap CI over pooled units and Wilcoxon vs `reference`, per metric."""
    present = [f for f in (_scores(r, spec) for r in seeds) if f is not None]
    pooled = _pooled(seeds, spec)
    stats = {}
    for metric in spec.metrics:
        # The stats helpers ignore NaN and return NaN on empty input, so a missing run needs no special case.
        mean, std = mean_std_over_seeds([f[metric].mean() for f in present])
        units = pooled[metric].dropna() if pooled is not None else pd.Series(dtype=float)
        _, low, high = bootstrap_ci(units.to_numpy())
        p_value = math.nan
        if reference is not None:
            paired = pd.concat([units, reference[metric]], axis=1, join="inner")
            p_value = paired_wilcoxon(paired.iloc[:, 0].to_numpy(), paired.iloc[:, 1].to_numpy())
        stats[metric] = {
            "mean": float(mean), "std": float(std), "ci_low": float(low), "ci_high": float(high),
            "n_seeds": len(present), spec.count_column: int(len(units)), "p_wilcoxon": p_value,
        }
    return stats


def _settings_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _row_settings(seeds: list[RunRecord], spec: TableSpec) -> str:
    found = {json.dumps(s, sort_keys=True) for r in seeds if _scores(r, spec) is not None
             for s in [_settings(r, spec)] if s is not None}
    return " | ".join(sorted(found))


def _settings_line(rows: list[RowSummary], spec: TableSpec) -> str:
    """The sidecar settings every scored run used, or which runs disagree (and which have no sidecar)."""
    values: dict[str, dict[str, list[str]]] = {}
    unknown = []
    scored = [(row, r) for row in rows for r in row.seeds if _scores(r, spec) is not None]
    if not scored:
        return "Settings: no scores."
    keys = sorted({k for _, r in scored for k in (_settings(r, spec) or {})},
                  key=lambda k: (k not in _SETTINGS_FIRST, _SETTINGS_FIRST.index(k) if k in _SETTINGS_FIRST else 0, k))
    for row, record in scored:
        settings = _settings(record, spec)
        if settings is None:
            unknown.append(row.label)
            continue
        for key in keys:
            text = _settings_text(settings[key]) if key in settings else "(unset)"
            runs = values.setdefault(key, {}).setdefault(text, [])
            if row.label not in runs:
                runs.append(row.label)
    agreed = [f"{k}={next(iter(v))}" for k, v in values.items() if len(v) == 1]
    differ = [f"{k} differs between runs: " + ", ".join(f"{text} ({'; '.join(runs)})" for text, runs in v.items())
              for k, v in values.items() if len(v) > 1]
    parts = [", ".join(agreed)] if agreed else []
    parts += differ
    if unknown:
        parts.append("no settings file for " + "; ".join(dict.fromkeys(unknown)))
    return "Settings: " + ("; ".join(parts) if parts else "none recorded") + "."


def _caption(spec: TableSpec, block: Block) -> str:
    where = ", ".join(f"{k} {v}" for k, v in block.key.items() if v is not None)
    unit = "patient" if spec.unit == "patient" else "image"
    text = (f"{spec.subject}, {where}. Cells: mean ± std over seeds of the per-seed mean over test {unit}s.")
    if spec.with_inference:
        text += (f" 95% CI: bootstrap over per-{unit} scores averaged over seeds."
                 f" p: paired Wilcoxon signed-rank test on per-{unit} mean Dice vs ")
        text += f"{block.reference_label}." if block.reference_label else "(no reference run on this dataset)."
    return f"{text} {_settings_line(block.rows, spec)}"


def build_blocks(records: list[RunRecord], spec: TableSpec, reference: str | None) -> list[Block]:
    """Rows of one table, grouped into blocks (datasets, or dataset and pair), in display order."""
    runs = group_runs(records)
    datasets = spec.datasets(records)
    chosen = [seeds for (dataset, _), seeds in runs.items() if dataset in datasets and spec.select(seeds)]
    by_block: dict[tuple, list[list[RunRecord]]] = {}
    for seeds in chosen:
        by_block.setdefault(tuple(getattr(seeds[0], c) for c in spec.block_columns), []).append(seeds)
    blocks = []
    for key in sorted(by_block, key=lambda k: tuple(str(v) for v in k)):
        members = sorted(by_block[key], key=lambda s: spec.sort_key(s[0]))
        dataset = key[0]
        ref_seeds = next((s for (ds, _), s in runs.items()
                          if ds == dataset and s[0].method == reference and s[0].is_main), None)
        ref_pooled = _pooled(ref_seeds, spec) if ref_seeds else None
        rows = []
        for seeds in members:
            is_ref = ref_seeds is not None and seeds is ref_seeds
            rows.append(RowSummary(
                seeds=seeds, label=spec.label(seeds[0]), paper_row=spec.paper_row(seeds[0]),
                stats=_summarise(seeds, spec, None if is_ref else ref_pooled), n_present=sum(
                    _scores(r, spec) is not None for r in seeds),
                is_reference=is_ref, settings=_row_settings(seeds, spec),
            ))
        ref_label = next((row.label for row in rows if row.is_reference),
                         TABLE1.label(ref_seeds[0]) if ref_seeds else None)
        block = Block(key=dict(zip(spec.block_columns, key)), rows=rows, reference_label=ref_label,
                      reference_run=ref_seeds[0].run if ref_seeds else None)
        block.caption = _caption(spec, block)
        blocks.append(block)
    return blocks


def tidy_frame(blocks: list[Block], spec: TableSpec) -> pd.DataFrame:
    """One line per (row, metric), full precision: the machine-readable form of a table."""
    id_cols = [*spec.block_columns, *(["group"] if "group" in spec.id_columns else []),
               "label", "method", "variant", "run", "paper_row"]
    stat_cols = ["mean", "std", "ci_low", "ci_high", "n_seeds", spec.count_column, "p_wilcoxon"]
    columns = [*id_cols, "metric", *stat_cols, "reference", "seeds", "status", "settings"]
    lines = []
    for block in blocks:
        for row in block.rows:
            ident = {**block.key, "group": row.first.group, "label": row.label, "method": row.first.method,
                     "variant": row.first.variant, "run": row.first.run, "paper_row": row.paper_row}
            seeds = ";".join(str(r.seed) for r in row.seeds if _scores(r, spec) is not None)
            for metric, stats in row.stats.items():
                lines.append({**ident, "metric": metric, **stats, "reference": block.reference_run,
                              "seeds": seeds, "status": row.status, "settings": row.settings})
    return pd.DataFrame(lines, columns=columns)


# ---------------------------------------------------------------- formatting (shared by all tables)

def _number(value: float, metric: str, signed: bool = False) -> str:
    return f"{value:{'+' if signed else ''}.{_DIGITS.get(metric, 3)}f}"


def _cell(stats: dict, metric: str, status: str) -> str:
    """"0.884 ± 0.012"; the mean alone for one seed; "missing" when the run has no scores."""
    if status == MISSING:
        return MISSING
    mean, std = stats["mean"], stats["std"]
    if not math.isfinite(mean):
        return "n/a"
    return _number(mean, metric) + (f" ± {_number(std, metric)}" if math.isfinite(std) else "")


def _ci_cell(stats: dict, metric: str, status: str) -> str:
    if status == MISSING:
        return MISSING
    if not math.isfinite(stats["ci_low"]):
        return "n/a"
    return f"[{_number(stats['ci_low'], metric)}, {_number(stats['ci_high'], metric)}]"


def _p_cell(row: RowSummary, metric: str) -> str:
    if row.status == MISSING:
        return MISSING
    p = row.stats[metric]["p_wilcoxon"]
    return "" if row.is_reference or not math.isfinite(p) else f"{p:.2g}"


def _display_rows(block: Block, spec: TableSpec) -> tuple[list[str], list[list[str]]]:
    names = {"group": "Group", "label": spec.label_header, "run": "Run"}
    headers = [names[c] for c in spec.id_columns] + [METRIC_HEADERS[m] for m in spec.metrics]
    if spec.with_inference:
        headers += ["95% CI (Mean Dice)", "p (Mean Dice)"]
    headers.append("Seeds")
    lines = []
    for row in block.rows:
        ident = {"group": row.first.group, "label": row.label, "run": row.first.run}
        line = [ident[c] for c in spec.id_columns] + [_cell(row.stats[m], m, row.status) for m in spec.metrics]
        if spec.with_inference:
            line += [_ci_cell(row.stats["mean_dice"], "mean_dice", row.status), _p_cell(row, "mean_dice")]
        line.append(str(row.n_present) if row.status == "ok" else f"{row.n_present}/{len(row.seeds)}")
        lines.append(line)
    return headers, lines


_LATEX_SPECIAL = re.compile(r"([&%$#_{}])")


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in a cell, then typeset the symbols the Markdown cells use."""
    text = text.replace("\\", r"\textbackslash{}").replace("~", r"\textasciitilde{}").replace("^", r"\^{}")
    text = _LATEX_SPECIAL.sub(r"\\\1", text)
    return text.replace("±", r"$\pm$").replace("–", "--").replace("Δ", r"$\Delta$")


def _block_heading(block: Block) -> str:
    return " / ".join(str(v) for v in block.key.values() if v is not None)


def _markdown(blocks: list[Block], spec: TableSpec) -> str:
    parts = [f"# {_title(spec)}\n"]
    if not blocks:
        parts.append("No runs.\n")
    for block in blocks:
        headers, lines = _display_rows(block, spec)
        parts.append(f"## {_block_heading(block)}\n\n{block.caption}\n\n"
                     + tabulate(lines, headers, tablefmt="github", disable_numparse=True) + "\n")
    return "\n".join(parts)


def _latex(blocks: list[Block], spec: TableSpec) -> str:
    parts = [f"% {_title(spec)}: written by benchmark.render.tables; do not edit.\n"]
    if not blocks:
        parts.append("% No runs.\n")
    for block in blocks:
        headers, lines = _display_rows(block, spec)
        body = tabulate([[latex_escape(c) for c in line] for line in lines], [latex_escape(h) for h in headers],
                        tablefmt="latex_raw", disable_numparse=True)
        label = re.sub(r"[^A-Za-z0-9]+", "-", f"{spec.stem}-{_block_heading(block)}").strip("-").lower()
        parts.append("\\begin{table}[ht]\n\\centering\n\\scriptsize\n"
                     f"\\caption{{{latex_escape(block.caption)}}}\n\\label{{tab:{label}}}\n{body}\n\\end{{table}}\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- the paper's numbers beside ours

def paper_table(filename: str) -> pd.DataFrame:
    """One of the paper's tables as transcribed in `benchmark/render/paper_tables/` (package data)."""
    with resources.files(__package__).joinpath("paper_tables", filename).open("r", encoding="utf-8") as stream:
        return pd.read_csv(stream)


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def _group_rank(group: str | None) -> int:
    return GROUP_ORDER.index(group) if group in GROUP_ORDER else 0


def _compare_block(block_key: dict, rows: list[RowSummary], paper: pd.DataFrame, spec: TableSpec,
                   skipped: dict[str, str]) -> list[dict]:
    """Our rows joined to the paper's by row name; paper rows nobody reproduced come out as missing, or as
    skipped with the reason when their method could not run here (``skipped``: normalised paper row -> why)."""
    paper_rows = {_norm(name): (i, name, rec) for i, (name, rec) in
                  enumerate(zip(paper[spec.paper_key], paper.to_dict("records")))}
    has_group = "group" in spec.id_columns
    out = []
    matched = set()
    for order, row in enumerate(rows):
        key = _norm(row.paper_row) if row.paper_row else None
        hit = paper_rows.get(key)
        if hit:
            matched.add(key)
        for metric in spec.metrics:
            ours = row.stats[metric]["mean"] if row.status != MISSING else math.nan
            paper_value = float(hit[2][metric]) if hit else math.nan
            if row.status == MISSING:
                status = MISSING
            else:
                status = row.status if hit else "no paper row"
            out.append({**block_key, "group": row.first.group, "label": row.label, "run": row.first.run,
                        "paper_row": hit[1] if hit else None, "metric": metric, "ours": ours,
                        "ours_std": row.stats[metric]["std"], "n_seeds": row.n_present, "paper": paper_value,
                        "diff": ours - paper_value, "status": status,
                        "_sort": (_group_rank(row.first.group), hit[0] if hit else math.inf, order)})
    for key, (index, name, rec) in paper_rows.items():
        if key in matched:
            continue
        group = rec.get("group")
        for metric in spec.metrics:
            out.append({**block_key, "group": group, "label": name, "run": None, "paper_row": name,
                        "metric": metric, "ours": math.nan, "ours_std": math.nan, "n_seeds": 0,
                        "paper": float(rec[metric]), "diff": math.nan,
                        "status": f"skipped: {skipped[key]}" if key in skipped else MISSING,
                        "_sort": (_group_rank(group), index, math.inf)})
    if not has_group:
        for line in out:
            line.pop("group")
    return out


def _skipped_paper_rows(spec: TableSpec, skipped: dict[str, tuple]) -> dict[str, str]:
    """Normalised paper row names of the methods skipped here (missing dependencies) -> the reason."""
    rows = {}
    for reason, info in skipped.values():
        if info is None or info.paper_name is None:
            continue
        paper = f"{info.paper_name} + Seg" if spec is TABLE1 and info.kind == "fusion" else info.paper_name
        rows[_norm(paper)] = reason
    return rows


def compare_with_paper(blocks: list[Block], spec: TableSpec, skipped: dict[str, tuple] | None = None) -> pd.DataFrame:
    """Ours, paper and ours - paper for every cell, per block; paper-only rows are status "missing" (or
    "skipped: <reason>" for the methods in ``skipped``: name -> (why it could not run here, its MethodInfo))."""
    skipped = _skipped_paper_rows(spec, skipped or {})
    paper = paper_table(spec.paper_file)
    lines, covered = [], set()
    for block in blocks:
        match = tuple(block.key[c] for c in spec.paper_match)
        covered.add(match)
        subset = paper[(paper[list(spec.paper_match)] == list(match)).all(axis=1)] if spec.paper_match else paper
        lines += sorted(_compare_block(block.key, block.rows, subset, spec, skipped), key=lambda d: d["_sort"])
    uncovered = paper.groupby(list(spec.paper_match), sort=False) if spec.paper_match else [((), paper)]
    for match, subset in uncovered:
        match = match if isinstance(match, tuple) else (match,)
        if match in covered:
            continue
        key = {c: None for c in spec.block_columns} | dict(zip(spec.paper_match, match))
        lines += sorted(_compare_block(key, [], subset, spec, skipped), key=lambda d: d["_sort"])
    frame = pd.DataFrame(lines)
    return frame.drop(columns="_sort") if len(frame) else frame


def _comparison_cell(line: dict) -> str:
    metric = line["metric"]
    not_run = line["status"] == MISSING or str(line["status"]).startswith("skipped")
    ours = MISSING if not_run else (
        _number(line["ours"], metric) if math.isfinite(line["ours"]) else "n/a")
    if not math.isfinite(line["paper"]):
        return f"{ours} / –"
    paper = _number(line["paper"], metric)
    if not math.isfinite(line["diff"]):
        return f"{ours} / {paper}"
    return f"{ours} / {paper} ({_number(line['diff'], metric, signed=True)})"


def _comparison_markdown(frame: pd.DataFrame, spec: TableSpec) -> str:
    parts = [f"# {_title(spec)}: reproduced vs paper\n",
             "Each cell: ours / paper (ours - paper). Ours is the mean over seeds; 'missing': no reproduced value; "
             "'–': the paper has no such row.\n"]
    if frame.empty:
        return "\n".join(parts)
    block_cols = list(spec.block_columns)
    blocks = frame[block_cols].astype(object).where(frame[block_cols].notna(), None)
    frame = frame.assign(_block=[tuple(b) for b in blocks.itertuples(index=False)])
    for block, lines in frame.groupby("_block", sort=False):
        heading = " / ".join(str(v) for v in block if v is not None) or "not reproduced"
        table = []
        for _, row_lines in lines.groupby(["label", "run"], sort=False, dropna=False):
            first = row_lines.iloc[0]
            cells = {ln["metric"]: _comparison_cell(ln) for ln in row_lines.to_dict("records")}
            table.append([first["label"], first["paper_row"] if isinstance(first["paper_row"], str) else "–",
                          *[cells[m] for m in spec.metrics], first["status"]])
        headers = ["Ours", "Paper row", *[METRIC_HEADERS[m] for m in spec.metrics], "Status"]
        parts.append(f"## {heading}\n\n" + tabulate(table, headers, tablefmt="github", disable_numparse=True) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------- writing

def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return write_text_atomic(path, frame.to_csv(index=False))  # shortest round-trip repr: full precision


def render_tables(records: Iterable[RunRecord], out_dir: str | Path, *, reference: str | None = None,
                  skipped: dict[str, tuple] | None = None) -> list[Path]:
    """Write every table (CSV, Markdown, LaTeX) and its paper comparison (CSV, Markdown) under `out_dir`.

    All files are written even without matching runs, so a workflow can name them as outputs.
    """
    records = list(records)
    reference = reference_method(records, reference)
    out_dir = Path(out_dir)
    written = []
    for spec in TABLES:
        blocks = build_blocks(records, spec, reference)
        comparison = compare_with_paper(blocks, spec, skipped)
        written += [
            _write_csv(out_dir / f"{spec.stem}.csv", tidy_frame(blocks, spec)),
            write_text_atomic(out_dir / f"{spec.stem}.md", _markdown(blocks, spec)),
            write_text_atomic(out_dir / f"{spec.stem}.tex", _latex(blocks, spec)),
            _write_csv(out_dir / f"{spec.stem}_vs_paper.csv", comparison),
            write_text_atomic(out_dir / f"{spec.stem}_vs_paper.md", _comparison_markdown(comparison, spec)),
        ]
    return written
