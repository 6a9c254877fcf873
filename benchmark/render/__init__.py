"""Tables 1-3 beside the paper's numbers, and the figures, from run directories `results/<dataset>/<run>/seed<k>/`.

`render_all` is what the workflow's render rule and `python -m benchmark render` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .figures import render_figures
from .runs import RunRecord, collect_runs, method_declarations
from .tables import render_tables

__all__ = ["RunRecord", "collect_runs", "render_all"]


def render_all(run_dirs: Iterable[str | Path], out_dir: str | Path, *,
               reference_method: str | None = None, context: dict | None = None,
               methods: dict | None = None) -> list[Path]:
    """Write `out_dir/tables/*` and `out_dir/figures/*` and return the written paths.

    `reference_method` is the method the Wilcoxon tests compare against (default: the first joint main run).
    `context` (written by the workflow): dataset labels (`datasets`) and the methods skipped here (`skipped`,
    name -> reason), which the tables name instead of leaving their rows silently missing. `methods`: the
    declarations that give display fields (default: every discovered method).
    """
    context = context or {}
    methods = method_declarations(context) if methods is None else methods
    records = collect_runs(run_dirs, context, methods=methods)
    out_dir = Path(out_dir)
    skipped = {name: (reason, methods.get(name)) for name, reason in context.get("skipped", {}).items()}
    return (render_tables(records, out_dir / "tables", reference=reference_method, skipped=skipped)
            + render_figures(records, out_dir / "figures", reference=reference_method))
