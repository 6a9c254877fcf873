"""The two training entry points: a method's own run, and the shared follower of a disjoint pipeline.

``train_run`` builds the method's networks (plus the shared follower for a joint pipeline), asks the method for
its recipe (``Method.stages``) and runs it with per-epoch checkpoints; ``train_follower`` trains the shared
follower on a run's fused store. Neither knows any method kind: the method decides how it trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..methods import load_method
from ..record import FollowerRun, RunConfig
from .checkpoint import save_weights, write_json
from .context import TrainContext
from .follower import build_follower, follower_run_context, follower_training_stages
from .loop import Stage, run_stages


def _run(ctx: TrainContext, nets: dict[str, torch.nn.Module], stages: list[Stage], out_dir: Path,
         finish: Callable[[], None], info: dict[str, Any], stop_after_epochs: int | None) -> dict[str, Any]:
    """Run the stages (resumable), then save the weights and ``run.json``; an early stop saves nothing."""
    ctx.state.modules = nets
    rows = run_stages(stages, ctx.state, out_dir / "work", ctx.seed, ctx.device,
                      stop_after_epochs=stop_after_epochs, progress=ctx.progress)
    if stop_after_epochs is not None and len(rows) < sum(s.epochs for s in stages):
        return {"interrupted_after": len(rows)}
    finish()
    save_weights(out_dir / "model.safetensors", nets, {**info, "epochs": len(rows)})
    write_json(out_dir / "run.json", {**info, "epochs": len(rows), "last": rows[-1] if rows else {}})
    return {"epochs": len(rows), "last": rows[-1] if rows else {}}


def train_run(record: RunConfig, store_dir: Path, out_dir: Path, *, device: str = "auto",
              stop_after_epochs: int | None = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one run from its record; resumable; writes ``model.safetensors``, ``run.json``, ``train_log.csv``.

    ``stop_after_epochs`` ends the run early, as an interruption would (tests of resuming use it).
    """
    out_dir = Path(out_dir)
    ctx = TrainContext(record.training, record.seed, store_dir, out_dir, record=record, device=device,
                       progress=progress)
    method = load_method(record.method, record.hparams, record=record)
    torch.manual_seed(ctx.seed)
    nets = method.networks()
    if record.pipeline == "joint":
        nets["follower"] = build_follower(record.follower.network)
    nets = {name: net.to(ctx.device) for name, net in nets.items()}
    stages = method.stages(ctx, nets)
    info = {"run": record.path, "method": record.method, "variant": record.variant}
    return _run(ctx, nets, stages, out_dir, lambda: method.finish(ctx, nets), info, stop_after_epochs)


def train_follower(run: FollowerRun, fused_store: Path, out_dir: Path, *, device: str = "auto",
                   stop_after_epochs: int | None = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the shared follower of a disjoint pipeline on the run's fused store (``fused_store/``)."""
    out_dir = Path(out_dir)
    ctx = follower_run_context(run, Path(fused_store), out_dir, device=device, progress=progress)
    torch.manual_seed(ctx.seed)
    nets = {"follower": build_follower(run.follower.network).to(ctx.device)}
    stages = follower_training_stages(ctx, nets["follower"])
    return _run(ctx, nets, stages, out_dir, lambda: None, {"run": run.run, "follower": True}, stop_after_epochs)
