"""A trained run loaded back from its folder: ``fuse`` two sources and ``segment`` a batch of slices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .methods import load_method
from .training.checkpoint import load_weights
from .training.follower import NUM_CLASSES, build_follower
from .training.loop import resolve_device


def read_run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (train the run first: python -m benchmark train ...)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


class TrainedRun:
    """Rebuilds the run's networks from its config and loads ``model.safetensors`` (EMA leader for joint)."""

    def __init__(self, run_dir: Path, device: str = "auto"):
        self.run_dir = Path(run_dir)
        self.info = read_run_info(self.run_dir)
        cfg = self.info["config"]
        self.device = resolve_device(device)
        self.method = load_method(cfg["method"], cfg["hparams"])
        self.kind = self.method.kind
        labelled = self.info["dataset_kind"] == "brats"
        modules: dict[str, torch.nn.Module] = {}
        if self.kind == "fusion":
            modules["fusion"] = self.method.build()
        elif self.kind == "joint":
            modules["leader"] = self.method.build_leader()
        else:
            modules["segmenter"] = self.method.build(self.info["in_channels"], NUM_CLASSES)
        if labelled and self.kind != "multichannel":
            modules["follower"] = build_follower(cfg["follower"])
        load_weights(self.run_dir / "model.safetensors", modules)
        self.modules = {k: m.to(self.device).eval() for k, m in modules.items()}

    @property
    def fuses(self) -> bool:
        return self.kind != "multichannel"

    @property
    def segments(self) -> bool:
        return "follower" in self.modules or "segmenter" in self.modules

    @torch.no_grad()
    def fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) sources in [0, 1] -> fused (B, 1, H, W) in [0, 1]."""
        a, b = a.to(self.device), b.to(self.device)
        if self.kind == "fusion":
            return self.modules["fusion"](a, b).float().clamp(0, 1)
        if self.kind == "joint":
            return self.modules["leader"](a, b).fused.float().clamp(0, 1)
        raise ValueError(f"{self.run_dir}: method {self.method.name!r} is a segmentation method; it does not fuse")

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W) sources -> logits (B, 4, H, W)."""
        images = images.to(self.device)
        if "segmenter" in self.modules:
            return self.modules["segmenter"](images).float()
        if "follower" not in self.modules:
            raise ValueError(f"{self.run_dir}: trained on a label-free dataset; it does not segment")
        fused = self.fuse(images[:, :1], images[:, 1:2])
        return self.modules["follower"](fused).float()
