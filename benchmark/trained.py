"""A trained run loaded back from its folder: ``fuse`` two sources, ``segment`` slices or fused images."""

from __future__ import annotations

from pathlib import Path

import torch

from .methods import load_method
from .record import FOLLOWER_DIR, RecordError, RunConfig
from .training.checkpoint import load_weights
from .training.follower import build_follower
from .training.loop import resolve_device


class TrainedRun:
    """Rebuilds a run's networks from its ``config.json`` and loads their weights.

    The method's networks come from ``model.safetensors`` (the EMA leader for joint methods); the shared
    follower from the same file (joint pipeline) or from ``follower/model.safetensors`` (disjoint pipeline),
    loaded on first use, so a run can fuse before its follower is trained.
    """

    def __init__(self, run_dir: Path, device: str = "auto"):
        self.run_dir = Path(run_dir)
        self.record = RunConfig.of_run_dir(self.run_dir)
        self.device = resolve_device(device)
        self.method = load_method(self.record.method, self.record.hparams, record=self.record)
        nets = self.method.networks()
        if self.record.pipeline == "joint":
            nets["follower"] = build_follower(self.record.follower.network)
        load_weights(self.run_dir / "model.safetensors", nets)
        self.nets = {name: net.to(self.device).eval() for name, net in nets.items()}

    @property
    def follower(self) -> torch.nn.Module:
        if "follower" not in self.nets:
            if self.record.pipeline != "disjoint":
                raise RecordError(f"{self.run_dir}: a {self.record.pipeline} run has no segmentation follower")
            from .record import FollowerRun

            follower_dir = self.run_dir / FOLLOWER_DIR
            spec = FollowerRun.read(follower_dir / "config.json")
            follower = build_follower(spec.follower.network)
            load_weights(follower_dir / "model.safetensors", {"follower": follower})
            self.nets["follower"] = follower.to(self.device).eval()
        return self.nets["follower"]

    @torch.no_grad()
    def fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) sources in [0, 1] -> fused (B, 1, H, W) in [0, 1]."""
        if not self.record.fuses:
            raise RecordError(f"{self.run_dir}: method {self.record.method!r} is a segmentation method; it does not fuse")
        fused = self.method.fuse(self.nets, a.to(self.device), b.to(self.device))
        return fused.float().clamp(0, 1)

    @torch.no_grad()
    def segment_fused(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused images (B, 1, H, W) -> logits (B, classes, H, W) of the run's follower."""
        return self.follower(fused.to(self.device)).float()

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """(B, M, H, W) sources -> logits (B, classes, H, W): the method's segmenter, or fuse then follow."""
        if not self.record.labelled:
            raise RecordError(f"{self.run_dir}: trained on a label-free dataset; it does not segment")
        images = images.to(self.device)
        if self.record.pipeline == "segmentation":
            return self.method.segment(self.nets, images).float()
        return self.segment_fused(self.fuse(images[:, :1], images[:, 1:2]))
