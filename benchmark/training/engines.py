"""Training engines: fusion-only, segmentation (disjoint follower / multi-channel), and bi-level.

``train_run`` reads one resolved run configuration (see ``benchmark.workflow.run_config``) and picks the
engine from the method's kind and the dataset kind:

| kind         | BraTS (labels)                                                   | paired (no labels)        |
|--------------|------------------------------------------------------------------|---------------------------|
| fusion       | fusion objective, then the shared follower on its frozen output  | fusion objective          |
| multichannel | the method's network on the stacked sources                      | -                         |
| joint        | follower warm-up on the average prior, then bi-level rollout;    | leader, physical losses   |
|              | ``bilevel: false`` = disjoint baseline (leader, then follower)   |                           |

Every pipeline on BraTS segments with the same follower network, optimiser, epochs and seed (the
follower's budget is ``warmup_epochs + bilevel_epochs``), so Table 1 compares inputs, not backbones.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import DataLoader

from ..data.splits import PatientBatchSampler, partition_by_patient
from ..data.store import SliceDataset
from ..methods import load_method
from .checkpoint import save_weights, write_json
from .follower import build_follower
from .loop import EMA, Stage, TrainState, autocast, clip_and_step, cosine_lr, resolve_device, run_stages, set_lr
from .losses import segmentation_loss


@dataclass
class TrainingConfig:
    """Schedule and optimiser settings shared by all engines (values of the paper where it gives them)."""

    batch_size: int = 8
    num_workers: int = 0
    amp: bool = True
    amp_dtype: str = "bfloat16"
    grad_clip: float = 1.0
    weight_decay: float = 1e-4
    fusion_epochs: int = 40
    fusion_lr: float = 1e-4
    warmup_epochs: int = 40
    bilevel_epochs: int = 120
    follower_lr: float = 1e-3
    leader_lr: float = 1e-4
    inner_steps: int = 3
    ema_decay: float = 0.999
    val_fraction: float = 0.5
    class_weights: list[float] = field(default_factory=lambda: [0.1, 1.0, 1.0, 1.0])
    dice_smooth: float = 1e-5
    max_batches_per_epoch: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


class _Mean:
    """Running means of named scalars over an epoch."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.sums[key] += float(value)
            self.counts[key] += 1

    def result(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def _sources(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["images"].to(device, non_blocking=True)
    if images.shape[1] != 2:
        raise ValueError(f"fusion needs exactly two source modalities, the store has {images.shape[1]}")
    return images[:, :1], images[:, 1:2]


def _limit(loader: Iterable, max_batches: int | None) -> Iterable:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


class Engine:
    """Shared plumbing of one run: device, data loaders, optimisers and the follower's loss."""

    def __init__(self, run_cfg: dict[str, Any], store_dir: Path, out_dir: Path, progress: Callable = print):
        self.cfg = run_cfg
        self.train = TrainingConfig.from_dict(run_cfg.get("training", {}))
        self.device = resolve_device(run_cfg.get("device", "auto"))
        self.seed = int(run_cfg["seed"])
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.dataset = SliceDataset(Path(store_dir) / "train.h5")
        self.method = load_method(run_cfg["method"], run_cfg.get("hparams", {}))
        self.class_weights = torch.tensor(self.train.class_weights, dtype=torch.float32, device=self.device)
        self.scaler = None
        if self.train.amp and self.device.type == "cuda" and self.train.amp_dtype == "float16":
            self.scaler = torch.amp.GradScaler("cuda")

    # -- data ---------------------------------------------------------------------------------------------
    def loader(self, epoch_key: int) -> Iterable[dict[str, Any]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch_key)
        loader = DataLoader(
            self.dataset,
            batch_size=self.train.batch_size,
            shuffle=True,
            generator=generator,
            num_workers=self.train.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return _limit(loader, self.train.max_batches_per_epoch)

    def patient_loader(self, epoch_key: int) -> Iterable[dict[str, Any]]:
        """Batches holding slices of at least two patients, for the patient-level D_tr / D_val split."""
        sampler = PatientBatchSampler(self.dataset.patients, self.train.batch_size, seed=self.seed)
        sampler.set_epoch(epoch_key)
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=self.train.num_workers)
        return _limit(loader, self.train.max_batches_per_epoch)

    def adamw(self, module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=self.train.weight_decay)

    def seg_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(logits.float(), target, class_weights=self.class_weights, smooth=self.train.dice_smooth)

    def step(self, loss, optimizer, module) -> None:
        clip_and_step(loss, optimizer, module.parameters(), self.train.grad_clip, self.scaler)

    # -- stages -------------------------------------------------------------------------------------------
    def fusion_stage(self, name: str, model: torch.nn.Module, loss_fn, optimizer, epochs: int, lr: float) -> Stage:
        """Train a fusion network on its own (label-free) objective ``loss_fn(model, a, b)``."""

        def run_epoch(local: int, total: int) -> dict[str, float]:
            set_lr(optimizer, cosine_lr(lr, local, total))
            model.train()
            mean = _Mean()
            for batch in self.loader(1000 + local):
                a, b = _sources(batch, self.device)
                with autocast(self.device, self.train.amp, self.train.amp_dtype):
                    loss, parts = loss_fn(model, a, b)
                self.step(loss, optimizer, model)
                mean.add({"loss": loss.item(), **parts})
            return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

        return Stage(name, epochs, run_epoch)

    def segmentation_stage(self, name: str, model, make_input, optimizer, epochs: int) -> Stage:
        """Train a segmentation network on ``make_input(batch)`` (fused prior or stacked sources)."""
        lr = self.train.follower_lr

        def run_epoch(local: int, total: int) -> dict[str, float]:
            set_lr(optimizer, cosine_lr(lr, local, total))
            model.train()
            mean = _Mean()
            for batch in self.loader(2000 + local):
                target = batch["label"].to(self.device)
                with torch.no_grad():
                    x = make_input(batch)
                with autocast(self.device, self.train.amp, self.train.amp_dtype):
                    loss = self.seg_loss(model(x), target)
                self.step(loss, optimizer, model)
                mean.add({"seg_loss": loss.item()})
            return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

        return Stage(name, epochs, run_epoch)

    def finish(self, modules: dict[str, torch.nn.Module], rows: list[dict[str, Any]]) -> dict[str, Any]:
        meta = {"method": self.cfg["method"], "variant": self.cfg.get("variant"), "epochs": len(rows)}
        save_weights(self.out_dir / "model.safetensors", modules, meta)
        in_channels = int(self.dataset[0]["images"].shape[0])
        write_json(self.out_dir / "run.json", {**self.cfg["info"], "in_channels": in_channels, "config": self.cfg})
        return {"epochs": len(rows), "last": rows[-1] if rows else {}}


def _average_prior(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    a, b = _sources(batch, device)
    return 0.5 * (a + b)


def train_run(
    run_cfg: dict[str, Any],
    store_dir: Path,
    out_dir: Path,
    *,
    stop_after_epochs: int | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one (dataset, method, variant, seed) run; resumable; writes ``model.safetensors`` and ``run.json``."""
    engine = Engine(run_cfg, store_dir, out_dir, progress)
    kind = engine.method.kind
    labelled = run_cfg["info"]["dataset_kind"] == "brats"
    torch.manual_seed(engine.seed)
    train = engine.train
    device = engine.device
    follower_epochs = train.warmup_epochs + train.bilevel_epochs
    stages: list[Stage]

    if kind == "fusion":
        fusion = engine.method.build().to(device)
        modules = {"fusion": fusion}
        state = TrainState(modules)
        stages = []
        if engine.method.trainable and train.fusion_epochs > 0:
            opt = engine.adamw(fusion, train.fusion_lr)
            state.optimizers["fusion"] = opt
            stages.append(engine.fusion_stage("fusion", fusion, engine.method.fusion_loss, opt, train.fusion_epochs, train.fusion_lr))
        if labelled:
            follower = build_follower(run_cfg["follower"]).to(device)
            modules["follower"] = follower
            opt_f = engine.adamw(follower, train.follower_lr)
            state.optimizers["follower"] = opt_f

            def fused_input(batch):
                fusion.eval()
                return fusion(*_sources(batch, device)).float()

            stages.append(engine.segmentation_stage("segmentation", follower, fused_input, opt_f, follower_epochs))

    elif kind == "multichannel":
        if not labelled:
            raise ValueError(f"method {run_cfg['method']!r} is a segmentation method; dataset has no labels")
        in_channels = engine.dataset[0]["images"].shape[0]
        net = engine.method.build(in_channels, 4).to(device)
        modules = {"segmenter": net}
        opt = engine.adamw(net, train.follower_lr)
        state = TrainState(modules, {"segmenter": opt})
        stages = [engine.segmentation_stage("segmentation", net, lambda b: b["images"].to(device), opt, follower_epochs)]

    else:  # joint
        leader = engine.method.build_leader().to(device)
        opt_l = engine.adamw(leader, train.leader_lr)

        def physical(model, a, b):
            return engine.method.physical_loss(model(a, b), a, b)

        if not labelled:
            modules = {"leader": leader}
            state = TrainState(modules, {"leader": opt_l})
            stages = [engine.fusion_stage("fusion", leader, physical, opt_l, train.fusion_epochs, train.leader_lr)]
        else:
            follower = build_follower(run_cfg["follower"]).to(device)
            opt_f = engine.adamw(follower, train.follower_lr)
            modules = {"leader": leader, "follower": follower}
            state = TrainState(modules, {"leader": opt_l, "follower": opt_f})
            if engine.method.bilevel:
                ema = EMA(leader, train.ema_decay)
                stages = [
                    # The paper leaves the leader's initialisation open; a random leader emits noise that the
                    # warmed-up follower cannot read, so ours first learns the physical losses alone
                    # (``fusion_epochs``; 0 = start stage 2 from the random leader).
                    engine.fusion_stage("leader_pretrain", leader, physical, opt_l, train.fusion_epochs, train.leader_lr),
                    engine.segmentation_stage(
                        "warmup", follower, lambda b: _average_prior(b, device), opt_f, train.warmup_epochs
                    ),
                    _bilevel_stage(engine, leader, follower, opt_l, opt_f, ema),
                ]
                state.emas["leader"] = ema
            else:
                # Disjoint baseline: the leader learns from the physical losses alone, then the follower
                # learns on its frozen output with the same budget as every other disjoint pipeline.
                def leader_input(batch):
                    leader.eval()
                    return leader(*_sources(batch, device)).fused.float()

                stages = [
                    engine.fusion_stage("fusion", leader, physical, opt_l, train.fusion_epochs, train.leader_lr),
                    engine.segmentation_stage("segmentation", follower, leader_input, opt_f, follower_epochs),
                ]

    rows = run_stages(stages, state, engine.out_dir / "work", engine.seed, device,
                      stop_after_epochs=stop_after_epochs, progress=progress)
    if stop_after_epochs is not None and len(rows) < sum(s.epochs for s in stages):
        return {"interrupted_after": len(rows)}
    if "leader" in state.emas:
        state.emas["leader"].copy_to(modules["leader"])  # evaluation uses the EMA leader (paper Eq. 4)
    return engine.finish(modules, rows)


def bilevel_iteration(engine: Engine, leader, follower, opt_l, opt_f, a, b, target, tr, val) -> dict[str, float]:
    """One outer iteration of Algorithm 1 on a batch split at patient level into ``tr`` and ``val``.

    Inner loop: K follower steps on D_tr with the leader frozen. Outer step: one leader step on D_val,
    the segmentation loss back-propagated through the just-adapted, frozen follower plus the physical
    regularisers. The follower never sees D_val's labels; the leader's gradient comes from D_val alone.
    """
    train, device = engine.train, engine.device
    tr = torch.as_tensor(tr, device=device)
    val = torch.as_tensor(val, device=device)
    leader.eval()
    with torch.no_grad(), autocast(device, train.amp, train.amp_dtype):
        fused_tr = leader(a[tr], b[tr]).fused.float()
    follower.train()
    for _ in range(train.inner_steps):
        with autocast(device, train.amp, train.amp_dtype):
            inner = engine.seg_loss(follower(fused_tr), target[tr])
        engine.step(inner, opt_f, follower)
    leader.train()
    follower.eval()
    follower.requires_grad_(False)
    try:
        with autocast(device, train.amp, train.amp_dtype):
            out = leader(a[val], b[val])
            seg = engine.seg_loss(follower(out.fused), target[val])
            physical, parts = engine.method.physical_loss(out, a[val], b[val])
            total = engine.method.hparams["w_seg"] * seg + physical
        engine.step(total, opt_l, leader)
    finally:
        follower.requires_grad_(True)
    return {"inner_seg_loss": inner.item(), "outer_seg_loss": seg.item(), "leader_loss": total.item(), **parts}


def _bilevel_stage(engine: Engine, leader, follower, opt_l, opt_f, ema: EMA) -> Stage:
    """Stage 2 of Algorithm 1: per batch, K follower steps on D_tr, then one leader step on D_val."""
    train, device = engine.train, engine.device

    def run_epoch(local: int, total: int) -> dict[str, float]:
        set_lr(opt_l, cosine_lr(train.leader_lr, local, total))
        set_lr(opt_f, cosine_lr(train.follower_lr, local, total))
        if local == 0:
            ema.reset(leader)  # average the bi-level leader, not its pre-training trajectory
        mean = _Mean()
        generator = torch.Generator().manual_seed(engine.seed * 7919 + local)
        for batch in engine.patient_loader(3000 + local):
            tr, val = partition_by_patient(batch["patient"], train.val_fraction, generator=generator)
            a, b = _sources(batch, device)
            target = batch["label"].to(device)
            mean.add(bilevel_iteration(engine, leader, follower, opt_l, opt_f, a, b, target, tr, val))
            ema.update(leader)
        return {**mean.result(), "lr": opt_l.param_groups[0]["lr"]}

    return Stage("bilevel", train.bilevel_epochs, run_epoch)
