"""One run's whole pipeline in-process, in the order of the workflow's rules: for tests and notebooks.

The workflow (``Snakefile``) is the way to run the benchmark: it runs these same steps as separate jobs,
skips what is up to date and runs independent jobs side by side. ``run_pipeline`` calls the same functions in
one process: train, fuse the splits the pipeline needs (``fused_splits``), train the shared follower of a
disjoint pipeline, evaluate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .evaluate import evaluate_run
from .fused_store import fuse_splits
from .record import FOLLOWER_DIR, FUSED_STORE, FollowerRun, RunConfig, fused_splits
from .training.engines import train_follower, train_run
from .workflow import validate_section


def run_pipeline(record: RunConfig, store_dir: Path | str, run_dir: Path | str, *, evaluation: dict[str, Any],
                 follower: FollowerRun | None = None, device: str = "auto",
                 progress: Callable[[str], None] = print) -> list[Path]:
    """Train, fuse, train the follower (disjoint pipelines: ``follower`` is required) and evaluate one run."""
    store_dir, run_dir = Path(store_dir), Path(run_dir)
    if record.pipeline == "disjoint" and follower is None:
        raise ValueError(f"{record.path}: a disjoint pipeline needs its follower record")
    record.write(run_dir / "config.json")
    train_run(record, store_dir, run_dir, device=device, progress=progress)
    fuse_splits(run_dir, store_dir, fused_splits(record.pipeline), run_dir / FUSED_STORE, device=device,
                progress=False)
    if record.pipeline == "disjoint":
        follower.write(run_dir / FOLLOWER_DIR / "config.json")
        train_follower(follower, run_dir / FUSED_STORE, run_dir / FOLLOWER_DIR, device=device, progress=progress)
    return evaluate_run(run_dir, store_dir, validate_section(evaluation, "evaluation"), device=device)
