"""What a method's recipe gets from the framework: the run's settings, its data, the device and the step helpers.

A ``TrainContext`` is made by the engine for one run and handed to ``Method.stages(ctx, nets)``. Recipes use it
to draw batches (seeded per epoch, so a resumed run follows the uninterrupted one), to step optimisers (AMP
scaler, gradient clipping) and to register what a checkpoint must restore (``track``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from ..data.splits import PatientBatchSampler
from ..data.store import SliceDataset
from ..record import RunConfig
from .loop import EMA, TrainState, autocast, clip_and_step, resolve_device
from .losses import segmentation_loss


@dataclass(frozen=True)
class TrainingConfig:
    """The resolved ``training`` settings of one run (defaults and meaning: ``workflows/schema``)."""

    batch_size: int
    num_workers: int
    amp: bool
    amp_dtype: str
    grad_clip: float
    weight_decay: float
    fusion_epochs: int
    fusion_lr: float
    warmup_epochs: int
    bilevel_epochs: int
    follower_lr: float
    leader_lr: float
    inner_steps: int
    ema_decay: float
    val_fraction: float
    class_weights: list[float]
    dice_smooth: float
    max_batches_per_epoch: int | None
    fusion_patch: int | None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainingConfig":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        missing = [k for k in known if k not in values]
        if unknown or missing:
            raise ValueError(f"training settings: unknown {unknown}, missing {missing} (resolve them with the "
                             "workflow's Plan, which fills the schema's defaults)")
        return cls(**values)


def limit(loader: Iterable, max_batches: int | None) -> Iterator:
    """The first ``max_batches`` batches of ``loader`` (all of them for None)."""
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


def random_crop(batch: dict[str, Any], size: int, generator: torch.Generator) -> dict[str, Any]:
    """Each image of a batch (and its label) cut to a random ``size`` x ``size`` window (fusion patches)."""
    h, w = batch["images"].shape[-2:]
    ch, cw = min(size, h), min(size, w)
    if (ch, cw) == (h, w):
        return batch
    tops = torch.randint(0, h - ch + 1, (len(batch["images"]),), generator=generator).tolist()
    lefts = torch.randint(0, w - cw + 1, (len(batch["images"]),), generator=generator).tolist()
    out = dict(batch)
    for key in ("images", "label", "chroma"):
        if key in batch:
            out[key] = torch.stack([t[..., y:y + ch, x:x + cw] for t, y, x in zip(batch[key], tops, lefts)])
    return out


class TrainContext:
    """One run's training environment (see the module doc)."""

    def __init__(self, training: dict[str, Any], seed: int, store_dir: Path, out_dir: Path, *,
                 record: RunConfig | None = None, device: str = "auto", progress: Callable[[str], None] = print):
        self.record = record
        self.training = TrainingConfig.from_dict(training)
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.store_dir = Path(store_dir)
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.state = TrainState({})
        self._datasets: dict[str, SliceDataset] = {}
        self.scaler = None
        if self.training.amp and self.device.type == "cuda" and self.training.amp_dtype == "float16":
            self.scaler = torch.amp.GradScaler("cuda")
        self.class_weights = torch.tensor(self.training.class_weights, dtype=torch.float32, device=self.device)

    # -- data -------------------------------------------------------------------------------------------------
    def dataset(self, split: str = "train") -> SliceDataset:
        """The run's store of ``split`` (opened once)."""
        if split not in self._datasets:
            self._datasets[split] = SliceDataset(self.store_dir / f"{split}.h5")
        return self._datasets[split]

    def loader(self, key: int, *, split: str = "train", batch_size: int | None = None, shuffle: bool = True,
               crop: int | None = None) -> Iterator[dict[str, Any]]:
        """Batches of ``split`` in an order seeded by ``(seed, key)``, at most ``max_batches_per_epoch`` of them.

        ``crop``: each image (and label) is replaced by a random ``crop`` x ``crop`` window (the whole extent along
        an axis shorter than that), drawn from its own generator seeded by ``(seed, key)``.
        """
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        loader = DataLoader(self.dataset(split), batch_size=batch_size or self.training.batch_size, shuffle=shuffle,
                            generator=generator, num_workers=self.training.num_workers,
                            pin_memory=self.device.type == "cuda")
        batches = limit(loader, self.training.max_batches_per_epoch)
        if crop is None:
            return batches
        offsets = torch.Generator().manual_seed(self.seed * 1_000_003 + key + 500_009)
        return (random_crop(batch, crop, offsets) for batch in batches)

    def patient_loader(self, key: int) -> Iterator[dict[str, Any]]:
        """Training batches holding slices of at least two patients, for a patient-level D_tr / D_val split."""
        sampler = PatientBatchSampler(self.dataset().patients, self.training.batch_size, seed=self.seed)
        sampler.set_epoch(key)
        loader = DataLoader(self.dataset(), batch_sampler=sampler, num_workers=self.training.num_workers)
        return limit(loader, self.training.max_batches_per_epoch)

    def sources(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two source modalities (B, 1, H, W) of a batch, on the device."""
        images = batch["images"].to(self.device, non_blocking=True)
        if images.shape[1] != 2:
            raise ValueError(f"fusion needs exactly two source modalities, the store has {images.shape[1]}")
        return images[:, :1], images[:, 1:2]

    # -- steps ------------------------------------------------------------------------------------------------
    def autocast(self):
        return autocast(self.device, self.training.amp, self.training.amp_dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: torch.nn.Module,
             grad_clip: float | None = None) -> None:
        """Backward, clip (by the run's ``grad_clip`` unless given), step."""
        clip = self.training.grad_clip if grad_clip is None else grad_clip
        clip_and_step(loss, optimizer, module.parameters(), clip, self.scaler)

    def seg_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The follower's objective: CE + class-weighted Dice (paper 3.5.1)."""
        return segmentation_loss(logits.float(), target, class_weights=self.class_weights,
                                 smooth=self.training.dice_smooth)

    # -- checkpointed state -----------------------------------------------------------------------------------
    def track(self, optimizer: torch.optim.Optimizer, name: str) -> torch.optim.Optimizer:
        """Register an optimiser so that checkpoints save and restore it; returns it."""
        self.state.optimizers[name] = optimizer
        return optimizer

    def track_ema(self, module: torch.nn.Module, decay: float, name: str) -> EMA:
        ema = EMA(module, decay)
        self.state.emas[name] = ema
        return ema
