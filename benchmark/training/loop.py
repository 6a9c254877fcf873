"""The epoch loop every engine shares: stages, cosine schedules, AMP, EMA, logs, resumable checkpoints.

An engine describes its training as a list of ``Stage`` objects (e.g. follower warm-up, then bi-level
rollout). ``run_stages`` runs them epoch by epoch, writes one CSV row per epoch and a resumable checkpoint
after every epoch. Each epoch re-seeds the random generators from ``(seed, epoch)``, so an interrupted run
resumed from its last checkpoint follows the path of an uninterrupted one. A checkpoint carries the run's
fingerprint (``benchmark.fingerprint``) and is resumed only by a run with the same one: a checkpoint of another
configuration, store or code version is discarded and the run starts fresh, saying so.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..atomic import write_atomic
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CPU_AMP_ENV = "FUSE4SEG_CPU_AMP"  # "1": autocast on CPU as well (bfloat16), e.g. so that tests reach the AMP path


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but torch.cuda.is_available() is False")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool, dtype: str = "bfloat16"):
    """Mixed precision on CUDA. CPU runs stay in float32 (reproducible, and bfloat16 is slow on most CPUs) unless
    ``$FUSE4SEG_CPU_AMP`` is "1": then CPU runs autocast to bfloat16, the CUDA runs' path on any machine (float16
    needs a gradient scaler, which CPU runs do not have)."""
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    if device.type == "cpu" and os.environ.get(CPU_AMP_ENV) == "1":
        if dtype != "bfloat16":
            raise ValueError(f"${CPU_AMP_ENV}=1: CPU autocast runs in bfloat16 only, but amp_dtype is {dtype!r}")
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cosine_lr(base_lr: float, epoch: int, total: int, min_factor: float = 0.01) -> float:
    """Cosine annealing from ``base_lr`` to ``min_factor * base_lr`` over ``total`` epochs."""
    if total <= 1:
        return base_lr
    progress = epoch / (total - 1)
    return base_lr * (min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """Exponential moving average of a module's parameters and buffers (paper Eq. 4)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def reset(self, module: torch.nn.Module) -> None:
        """Restart the average at the module's current weights (e.g. when the averaged stage begins)."""
        for key, value in module.state_dict().items():
            self.shadow[key].copy_(value)

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for key, value in module.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[key].copy_(value)

    def copy_to(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in self.shadow:
            self.shadow[key].copy_(state[key])


def raise_if_nonfinite(grad_norm: torch.Tensor, loss: torch.Tensor) -> None:
    """``FloatingPointError`` if a gradient norm is NaN or inf (called before the optimiser step)."""
    if not torch.isfinite(grad_norm):
        raise FloatingPointError(f"non-finite gradient (norm {grad_norm.item()}, loss {loss.item():.4g}): a loss "
                                 "term or a layer produced NaN or inf; no weight was changed")


def clip_and_step(loss: torch.Tensor, optimizer, parameters, grad_clip: float | None, scaler=None) -> None:
    """Backward, optional gradient clipping (by global norm), optimiser step; AMP scaler aware.

    Without a scaler a non-finite gradient raises ``FloatingPointError`` before the step, instead of writing NaN
    into the weights (with one, the scaler skips such a step and lowers its scale, as AMP intends).
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip or scaler is None:  # without clipping, a bound of inf only measures the norm
        norm = torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], grad_clip or math.inf)
        if scaler is None:
            raise_if_nonfinite(norm, loss)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


@dataclass
class Stage:
    """``epochs`` calls of ``run_epoch(epoch_in_stage, n_epochs) -> dict of mean losses``."""

    name: str
    epochs: int
    run_epoch: Callable[[int, int], dict[str, float]]


@dataclass
class TrainState:
    """Everything that a checkpoint must restore: modules, optimisers, EMA shadows."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    emas: dict[str, EMA] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "emas": {k: e.state_dict() for k, e in self.emas.items()},
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, e in self.emas.items():
            e.load_state_dict({n: t.to(device) for n, t in state["emas"][k].items()})


class EpochLog:
    """Per-epoch CSV log (columns grow as stages add losses) and optional TensorBoard scalars."""

    def __init__(self, path: Path, rows: list[dict[str, Any]] | None = None):
        self.path = Path(path)
        self.rows = list(rows or [])
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))
        except Exception:  # TensorBoard is optional
            self._tb = None

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tb.add_scalar(f"{row['stage']}/{key}", value, row["epoch"])
            self._tb.flush()

    def write(self) -> None:
        """Rewrite the CSV (a header alone for runs without training, e.g. a parameter-free fusion). Columns:
        ``epoch``, ``stage``, then every other key in the order the epochs first logged it."""
        columns = list(dict.fromkeys(["epoch", "stage", *(c for r in self.rows for c in r)]))

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)

        write_atomic(self.path, write)


def _resume(ckpt: Path, fingerprint: str, state: TrainState, device: torch.device,
            progress: Callable[[str], None]) -> tuple[int, list[dict[str, Any]]]:
    """``(next epoch, log rows)`` restored from ``ckpt``, or ``(0, [])`` (and no checkpoint) when there is none or
    it belongs to another run (fingerprint) or cannot be read."""
    if not ckpt.is_file():
        return 0, []
    try:
        saved, meta = load_checkpoint(ckpt, map_location=str(device))
        found = meta.get("fingerprint")
        if found != fingerprint:
            raise CheckpointError(f"{ckpt}: written for fingerprint {found}, this run's is {fingerprint} (its "
                                  "configuration, stores or code changed)")
        state.load_state_dict(saved, device)
    except CheckpointError as err:
        progress(f"not resuming: {err}; starting fresh")
        ckpt.unlink()
        return 0, []
    progress(f"resuming from {ckpt} at epoch {meta['next_epoch']}")
    return meta["next_epoch"], meta["log"]


def run_stages(
    stages: list[Stage],
    state: TrainState,
    work_dir: Path,
    seed: int,
    device: torch.device,
    *,
    fingerprint: str,
    stop_after_epochs: int | None = None,
    progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run ``stages`` with a checkpoint after each epoch in ``work_dir``; resume from one with the same
    ``fingerprint`` (see the module doc).

    ``stop_after_epochs`` ends the run early (after that many global epochs) as an interruption would;
    tests use it to check that resuming reproduces an uninterrupted run.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt = work_dir / "last.safetensors"
    start, rows = _resume(ckpt, fingerprint, state, device, progress)
    log = EpochLog(work_dir.parent / "train_log.csv", rows)
    log.write()
    total = sum(s.epochs for s in stages)
    epoch = 0
    for stage in stages:
        for local in range(stage.epochs):
            if epoch >= start:
                if stop_after_epochs is not None and epoch >= stop_after_epochs:
                    return log.rows
                seed_everything(seed * 100_003 + epoch)
                t0 = time.perf_counter()
                try:
                    losses = stage.run_epoch(local, stage.epochs)
                except FloatingPointError as err:
                    raise FloatingPointError(f"stage {stage.name!r}, epoch {local + 1}/{stage.epochs}: {err}") from err
                row = {"epoch": epoch, "stage": stage.name, **losses, "seconds": round(time.perf_counter() - t0, 3)}
                log.append(row)
                save_checkpoint(ckpt, state.state_dict(),
                                {"fingerprint": fingerprint, "next_epoch": epoch + 1, "log": log.rows})
                shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items() if isinstance(v, float))
                progress(f"[{stage.name}] epoch {epoch + 1}/{total}: {shown} ({row['seconds']:.1f}s)")
            epoch += 1
    return log.rows
