"""Figures beside the paper's: fusion grids (Fig. 5), segmentation overlays (Fig. 3), the interpretability figure of
section 4.3 (Fig. 4) and training curves. PNG and PDF, rendered with Agg and no pyplot state, byte-stable.

Every method is shown on the same slices (matched by slice name), so columns can be compared; a run without
example arrays gets a "missing" panel instead of being dropped silently.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..atomic import write_atomic
from ..data.colour import rebuild_rgb
from .runs import RunRecord, group_runs, reference_method, table1_sort_key

MAX_SLICES = 4
PANEL_INCHES = 1.7
DPI = 150
# Paper's Fig. 3: necrotic core red, enhancing tumour yellow; edema green as in the BraTS papers.
CLASS_COLOURS = {1: ("NCR", (0.89, 0.10, 0.11)), 2: ("ED", (0.30, 0.69, 0.29)), 3: ("ET", (1.00, 0.85, 0.18))}
OVERLAY_ALPHA = 0.6
_NOT_CURVES = {"epoch", "stage", "lr", "follower_lr", "seconds"}
# Bi-level diagnostics (benchmark/training/bilevel.py): shown in their own figure, not among the losses.
_DIAGNOSTICS = (("closeness to the prior", ("corr_prior", "mse_prior")),
                ("share of the leader's gradient", ("share_seg", "share_dec", "share_grad", "share_mse")),
                ("validation Dice", ("val_dice",)))
_DIAGNOSTIC_COLUMNS = {c for _, columns in _DIAGNOSTICS for c in columns if c != "val_dice"}


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """PNG and PDF of `fig`, each written atomically; no timestamps, so equal input gives equal bytes."""
    FigureCanvasAgg(fig)
    paths = []
    for fmt, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
        fig.set_layout_engine("none")  # the first save fixed the layout; the second need not solve it again
        paths.append(write_atomic(out_dir / f"{stem}.{fmt}", lambda tmp: tmp.write_bytes(buffer.getvalue())))
    return paths


def overlay(background: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gray image with the tumour classes blended in their fixed colours."""
    rgb = np.repeat(np.clip(background, 0.0, 1.0)[..., None], 3, axis=-1)
    for value, (_, colour) in CLASS_COLOURS.items():
        mask = labels == value
        rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.asarray(colour)
    return rgb


def _legend(fig: Figure) -> None:
    handles = [Patch(color=colour, label=name) for name, colour in CLASS_COLOURS.values()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=8)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class _Examples:
    """The example arrays of one run (its lowest seed that saved them), indexed by slice name."""

    def __init__(self, seeds: list[RunRecord]):
        self.record = next((r for r in seeds if r.examples_path is not None), seeds[0])
        self.arrays = self.record.load_examples() or {}
        names = self.arrays.get("name")
        count = len(next(iter(self.arrays.values()))) if self.arrays else 0
        names = [str(n) for n in names] if names is not None else [str(i) for i in range(count)]
        self.index = {name: i for i, name in enumerate(names)}
        self.names = names

    def get(self, key: str, name: str) -> np.ndarray | None:
        if key not in self.arrays or name not in self.index:
            return None
        return self.arrays[key][self.index[name]]


def _main_runs(records: list[RunRecord], dataset: str) -> list[list[RunRecord]]:
    runs = [seeds for (ds, _), seeds in group_runs(records).items() if ds == dataset and seeds[0].is_main]
    return sorted(runs, key=lambda seeds: table1_sort_key(seeds[0]))


def _grid(rows: int, cols: int, extra_bottom: float = 0.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(cols * PANEL_INCHES, rows * PANEL_INCHES + 0.35 + extra_bottom), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


def _show(ax, image: np.ndarray | None, title: str | None = None, *, shape: tuple[int, ...] = (1, 1)) -> None:
    """An image panel; None draws a "missing" panel of the given shape so the grid stays aligned."""
    if image is None:
        ax.imshow(np.full(shape[:2], 0.92), cmap="gray", vmin=0.0, vmax=1.0)
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.35")
    elif image.ndim == 3:
        ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest", cmap="gray", vmin=0.0, vmax=1.0)
    if title:
        ax.set_title(title, fontsize=8)


def _label_rows(axes: np.ndarray, names: list[str]) -> None:
    for ax, name in zip(axes[:, 0], names):
        ax.text(-0.04, 0.5, name, rotation=90, ha="right", va="center", transform=ax.transAxes, fontsize=7)


def _first_with(examples: Iterable[_Examples], *keys: str) -> _Examples | None:
    """The first run whose examples hold all `keys`: it supplies the sources (and truth) every column shares."""
    return next((ex for ex in examples if ex.names and all(k in ex.arrays for k in keys)), None)


def _fused_image(ex: _Examples, name: str) -> np.ndarray | None:
    rgb = ex.get("fused_rgb", name)
    if rgb is not None:
        return rgb / 255.0 if rgb.dtype.kind in "ui" else rgb
    return ex.get("fused", name)


def fusion_grid(runs: list[list[RunRecord]]) -> Figure | None:
    """Sources and each method's fused image on the same test images (colour where the pair has chroma)."""
    runs = [seeds for seeds in runs if seeds[0].kind != "multichannel"]
    examples = [_Examples(seeds) for seeds in runs]
    source = _first_with(examples, "sources")
    if source is None:
        return None
    names = source.names[:MAX_SLICES]
    modalities = source.record.modalities
    n_sources = source.arrays["sources"].shape[1]
    fig, axes = _grid(len(names), n_sources + len(runs))
    for i, name in enumerate(names):
        sources = source.get("sources", name)
        chroma = source.get("chroma", name)
        for m in range(n_sources):
            image = sources[m]
            if m == n_sources - 1 and chroma is not None:
                image = rebuild_rgb(image, chroma)
            _show(axes[i, m], image, modalities[m] if i == 0 and m < len(modalities) else None)
        for j, (seeds, ex) in enumerate(zip(runs, examples)):
            _show(axes[i, n_sources + j], _fused_image(ex, name), seeds[0].display_name if i == 0 else None,
                  shape=sources.shape[1:])
    _label_rows(axes, names)
    fig.suptitle(f"Fused images, {runs[0][0].dataset}" + (f" ({runs[0][0].pair})" if runs[0][0].pair else ""),
                 fontsize=9)
    return fig


def segmentation_overlays(runs: list[list[RunRecord]]) -> Figure | None:
    """Ground truth and every pipeline's prediction on the same BraTS slices, over the first source."""
    examples = [_Examples(seeds) for seeds in runs]
    truth = _first_with(examples, "sources", "label")
    if truth is None:
        return None
    names = truth.names[:MAX_SLICES]
    fig, axes = _grid(len(names), 1 + len(runs), extra_bottom=0.3)
    for i, name in enumerate(names):
        background = truth.get("sources", name)[0]
        _show(axes[i, 0], overlay(background, truth.get("label", name)), "Ground truth" if i == 0 else None)
        for j, (seeds, ex) in enumerate(zip(runs, examples)):
            prediction = ex.get("prediction", name)
            image = None if prediction is None else overlay(background, prediction)
            _show(axes[i, 1 + j], image, seeds[0].table1_label if i == 0 else None, shape=background.shape)
    _label_rows(axes, names)
    _legend(fig)
    fig.suptitle(f"Segmentation on {runs[0][0].dataset}: ground truth vs predictions "
                 f"(background: {truth.record.modalities[0]})", fontsize=9)
    return fig


def interpretability(seeds: list[RunRecord]) -> Figure | None:
    """Section 4.3: the sources, their average (the warm-up prior), the learned fused prior, what it changed,
    and the prediction made from it next to the ground truth."""
    ex = _first_with([_Examples(seeds)], "sources", "fused")
    if ex is None:
        return None
    names = ex.names[: min(3, MAX_SLICES)]
    record = ex.record
    modalities = record.modalities
    n_sources = ex.arrays["sources"].shape[1]
    titles = [*modalities[:n_sources], "Average prior", f"Fused ({record.display_name})", "Fused − average",
              "Prediction", "Ground truth"]
    fig, axes = _grid(len(names), len(titles), extra_bottom=0.3)
    diffs = [ex.get("fused", n) - ex.get("sources", n).mean(axis=0) for n in names]
    scale = max(float(np.max(np.abs(d))) for d in diffs) or 1.0
    for i, name in enumerate(names):
        sources = ex.get("sources", name)
        background = sources[0]
        prediction, label = ex.get("prediction", name), ex.get("label", name)
        panels = [*sources, sources.mean(axis=0), ex.get("fused", name)]
        for k, image in enumerate(panels):
            _show(axes[i, k], image)
        diff_image = axes[i, len(panels)].imshow(diffs[i], cmap="RdBu_r", vmin=-scale, vmax=scale,
                                                  interpolation="nearest")
        _show(axes[i, len(panels) + 1], None if prediction is None else overlay(background, prediction),
              shape=background.shape)
        _show(axes[i, len(panels) + 2], None if label is None else overlay(background, label), shape=background.shape)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=8)
    fig.colorbar(diff_image, ax=list(axes[:, len(titles) - 3]), location="bottom", shrink=0.9, aspect=15,
                 pad=0.02).ax.tick_params(labelsize=6)
    _label_rows(axes, names)
    _legend(fig)
    fig.suptitle(f"What the segmentation network sees: {record.display_name} on {record.dataset}", fontsize=9)
    return fig


def _curve_columns(logs: list[pd.DataFrame], exclude=_DIAGNOSTIC_COLUMNS) -> list[str]:
    columns = dict.fromkeys(c for log in logs for c in log.columns if c not in _NOT_CURVES and c not in exclude
                            and pd.api.types.is_numeric_dtype(log[c]))
    return list(columns)


def _mark_stages(ax, log: pd.DataFrame) -> None:
    """Dashed lines between stages and each stage's name above the part of it the panel shows (a name placed
    outside the panel's x range, e.g. a stage without validation Dice, would break the figure's layout)."""
    lo, hi = ax.get_xlim()
    for k, (stage, first, last) in enumerate(_stage_spans(log)):
        if k and lo <= first - 0.5 <= hi:
            ax.axvline(first - 0.5, color="0.3", ls="--", lw=0.8)
        if last < lo or first > hi:
            continue
        ax.text((max(first, lo) + min(last, hi)) / 2, 1.01, stage, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=6, color="0.3")
    ax.set_xlim(lo, hi)


def _stage_spans(log: pd.DataFrame) -> list[tuple[str, float, float]]:
    """(stage, first epoch, last epoch) of each consecutive stretch of one stage."""
    if "stage" not in log.columns or log.empty:
        return []
    stages = log["stage"].astype(str).to_numpy()
    epochs = log["epoch"].to_numpy(dtype=float)
    starts = [0] + [i for i in range(1, len(stages)) if stages[i] != stages[i - 1]]
    ends = starts[1:] + [len(stages)]
    return [(stages[s], epochs[s], epochs[e - 1]) for s, e in zip(starts, ends)]


def training_curves(runs: list[list[RunRecord]]) -> Figure | None:
    """One panel per run: each loss column against epoch (mean over seeds, min-max band), stage boundaries."""
    if not runs:
        return None
    cols = min(3, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig = Figure(figsize=(cols * 3.6, rows * 2.7 + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    for ax, seeds in zip(axes, runs):
        logs = [r.train_log for r in seeds if r.train_log is not None]
        ax.set_title(f"{seeds[0].display_name}" + (f" [{seeds[0].variant}]" if seeds[0].variant else "")
                     + f" ({len(logs)} seed{'s' if len(logs) != 1 else ''})", fontsize=8, pad=11)
        if not logs:
            ax.text(0.5, 0.5, "no train_log.csv", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        columns = _curve_columns(logs)
        stacked = pd.concat(logs, ignore_index=True)
        by_epoch = stacked.groupby("epoch")[columns]
        mean, low, high = by_epoch.mean(), by_epoch.min(), by_epoch.max()
        for column in columns:
            line, = ax.plot(mean.index, mean[column], lw=1.2, label=column)
            if len(logs) > 1:
                ax.fill_between(mean.index, low[column], high[column], color=line.get_color(), alpha=0.2, lw=0)
        values = mean.to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size and values.min() > 0 and values.max() / values.min() > 100:
            # Losses spanning two decades or more (so at least two labelled powers of ten): log scale,
            # with plain labels ("0.1") rather than mathtext.
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        _mark_stages(ax, logs[0])
        ax.set_xlabel("epoch", fontsize=7)
        ax.tick_params(which="both", labelsize=6)
        ax.legend(fontsize=6, frameon=False)
    fig.suptitle(f"Training curves, {runs[0][0].dataset} (mean over seeds, band: min-max)", fontsize=9)
    return fig


def leader_diagnostics(runs: list[list[RunRecord]]) -> Figure | None:
    """Per joint run, a row of three panels over the epochs: the fused image's correlation and MSE to the physical
    prior (did the leader drift, collapse or stay readable?), the share of the leader's gradient from each loss term
    (what drives it), and the follower's validation Dice (does the segmentation learn?). Mean over seeds."""
    rows = [(seeds, [r.train_log for r in seeds if r.train_log is not None]) for seeds in runs
            if seeds[0].kind == "joint"]
    rows = [(seeds, logs) for seeds, logs in rows if logs and any("corr_prior" in log for log in logs)]
    if not rows:
        return None
    fig = Figure(figsize=(3 * 3.4, len(rows) * 2.5 + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for (seeds, logs), row in zip(rows, axes):
        mean = pd.concat(logs, ignore_index=True).groupby("epoch").mean(numeric_only=True)
        name = seeds[0].display_name + (f" [{seeds[0].variant}]" if seeds[0].variant else "")
        for ax, (title, columns) in zip(row, _DIAGNOSTICS):
            present = [c for c in columns if c in mean and mean[c].notna().any()]
            for column in present:  # diagnostics are taken on some epochs only: join the points taken
                series = mean[column].dropna()
                ax.plot(series.index, series, marker=".", ms=3, lw=1.2, label=column)
            if not present:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, fontsize=7)
            _mark_stages(ax, logs[0])
            ax.set_title(f"{name}: {title}", fontsize=7, pad=10)
            ax.set_xlabel("epoch", fontsize=7)
            ax.tick_params(labelsize=6)
            if present:
                ax.legend(fontsize=6, frameon=False)
    fig.suptitle(f"Leader diagnostics, {runs[0][0].dataset} (mean over seeds)", fontsize=9)
    return fig


def _joint_reference(runs: list[list[RunRecord]], reference: str | None) -> list[RunRecord] | None:
    joint = [seeds for seeds in runs if seeds[0].kind == "joint"]
    return next((s for s in joint if s[0].method == reference), joint[0] if joint else None)


def render_figures(records: Iterable[RunRecord], out_dir: str | Path, *, reference: str | None = None) -> list[Path]:
    """Write every figure the runs allow under `out_dir`, one file set per dataset and kind."""
    records = list(records)
    reference = reference_method(records, reference)
    out_dir = Path(out_dir)
    written = []
    for dataset in dict.fromkeys(r.dataset for r in records):
        kind = next(r.dataset_kind for r in records if r.dataset == dataset)
        main = _main_runs(records, dataset)
        all_runs = sorted((s for (ds, _), s in group_runs(records).items() if ds == dataset),
                          key=lambda s: (table1_sort_key(s[0]), s[0].variant or ""))
        figures = {f"curves_{dataset}": training_curves(all_runs), f"diagnostics_{dataset}": leader_diagnostics(all_runs)}
        if kind == "paired":
            figures[f"fusion_grid_{dataset}"] = fusion_grid(main)
        else:
            figures[f"overlays_{dataset}"] = segmentation_overlays(main)
            joint = _joint_reference(main, reference)
            figures[f"interpretability_{dataset}"] = interpretability(joint) if joint else None
        for stem, fig in figures.items():
            if fig is not None:
                written += save_figure(fig, out_dir, _safe(stem))
    return written
