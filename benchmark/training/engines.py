"""The two training entry points: a method's own run, and the shared follower of a disjoint pipeline.

``train_run`` builds the method's networks (plus the shared follower for a joint pipeline), asks the method for
its recipe (``Method.stages``) and runs it with per-epoch checkpoints; ``train_follower`` trains the shared
follower on a run's fused store. Neither knows any method kind: the method decides how it trains.

Each run has a fingerprint (``benchmark.fingerprint``): its record, the content digests of the train and val
stores and the version of the code that trains it. Checkpoints are resumed only under the same fingerprint; the
model file and ``run.json`` carry it, and ``run.json`` lists the patients of the stores the run saw, so that
evaluation can refuse to score a patient a model was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import folder_lock
from ..data import DataError
from ..data.store import read_store_attrs
from ..fingerprint import code_version, digest
from ..methods import find_method, load_method
from ..record import FollowerRun, RunConfig
from .checkpoint import save_weights, write_json
from .context import TrainContext
from .follower import build_follower, follower_run_context, follower_training_stages
from .loop import Stage, run_stages

SEEN_SPLITS = ("train", "val")  # the store splits a run reads while it trains


def store_identity(store_dir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Content digests and patients of the splits a run trains on."""
    digests, patients = {}, {}
    for split in SEEN_SPLITS:
        path = Path(store_dir) / f"{split}.h5"
        attrs = read_store_attrs(path)
        if "content_digest" not in attrs:
            raise DataError(f"{path}: written by an older version, without a content digest; re-run its rule "
                            "(preprocess or fuse)")
        digests[split], patients[split] = attrs["content_digest"], attrs["patients"]
    return digests, patients


def _run(ctx: TrainContext, nets: dict[str, torch.nn.Module], stages: list[Stage], out_dir: Path,
         finish: Callable[[], None], info: dict[str, Any], identity: dict[str, Any],
         stop_after_epochs: int | None) -> dict[str, Any]:
    """Run the stages (resumable), then save the weights and ``run.json``; an early stop saves nothing.

    ``identity``: the record, code version and stores the fingerprint is made of."""
    stores, patients = store_identity(ctx.store_dir)
    fingerprint = digest({**identity, "stores": stores})
    info = {**info, "fingerprint": fingerprint}
    ctx.state.modules = nets
    with folder_lock(out_dir, f"training {info['run']}"):
        rows = run_stages(stages, ctx.state, out_dir / "work", ctx.seed, ctx.device, fingerprint=fingerprint,
                          stop_after_epochs=stop_after_epochs, progress=ctx.progress)
        if stop_after_epochs is not None and len(rows) < sum(s.epochs for s in stages):
            return {"interrupted_after": len(rows)}
        finish()
        save_weights(out_dir / "model.safetensors", nets, {**info, "epochs": len(rows)})
        write_json(out_dir / "run.json", {**info, "epochs": len(rows), "last": rows[-1] if rows else {},
                                          "code": identity["code"], "stores": stores, "patients": patients})
    return {"epochs": len(rows), "last": rows[-1] if rows else {}, "fingerprint": fingerprint}


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
        nets["follower"] = build_follower(record.follower.network, seed=ctx.seed)
    nets = {name: net.to(ctx.device) for name, net in nets.items()}
    stages = method.stages(ctx, nets)
    info = {"run": record.path, "method": record.method, "variant": record.variant}
    identity = {"record": record.to_dict(), "code": code_version(find_method(record.method).path)}
    return _run(ctx, nets, stages, out_dir, lambda: method.finish(ctx, nets), info, identity, stop_after_epochs)


def train_follower(run: FollowerRun, fused_store: Path, out_dir: Path, *, device: str = "auto",
                   stop_after_epochs: int | None = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the shared follower of a disjoint pipeline on the run's fused store (``fused_store/``)."""
    out_dir = Path(out_dir)
    ctx = follower_run_context(run, Path(fused_store), out_dir, device=device, progress=progress)
    torch.manual_seed(ctx.seed)
    nets = {"follower": build_follower(run.follower.network, seed=ctx.seed).to(ctx.device)}
    stages = follower_training_stages(ctx, nets["follower"])
    identity = {"record": run.to_dict(), "code": code_version()}
    return _run(ctx, nets, stages, out_dir, lambda: None, {"run": run.run, "follower": True}, identity,
                stop_after_epochs)
