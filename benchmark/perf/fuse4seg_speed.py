"""Fuse4Seg's cost: ``python -m benchmark.perf.fuse4seg_speed [--device cuda] [--scale full --size 192]``.

Three parts:
1. Measured on this device, at ``--scale`` (test: the synthetic default's networks; full: ``--config``'s) /
   ``--size`` / ``--batch``: one leader step on the physical losses, one
   follower step on the prior, one bi-level outer iteration (K follower steps on D_tr + one leader step on D_val),
   one inference of a 256 x 256 pair, and the peak memory (CUDA: torch's peak allocation; CPU: peak resident set).
2. FLOPs per training step at the paper's configuration (``--config``, default ``workflows/config/paper.yaml``:
   full-size leader and follower, its slice size, batch and K), counted with ``torch.utils.flop_counter`` on the
   meta device (nothing is computed, so this takes seconds on any machine).
3. Steps per epoch on BraTS 2021 (1251 cases, the config's train fraction and keep rule; slices per case measured on
   the sample data when ``--sample-data`` exists, else the sample's means below) and the projected hours of the
   paper's schedule (leader pre-training, 40 warm-up and 120 bi-level epochs) on a GPU sustaining ``--tflops``.
   With ``--device cuda`` the measured step times give a second projection.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from ..methods import load_method
from ..training.bilevel import bilevel_iteration
from ..training.context import TrainContext
from ..training.follower import build_follower
from ..workflow import SCHEMA_PATH, Plan, validate_config

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "workflows" / "config" / "default.yaml"
BRATS2021_CASES = 1251
# Brain / tumour-bearing axial slices per case, measured on the six BraTS 2018 sample cases (192 x 192 windows):
# brain 133-143 (mean 139), tumour 54-76 (mean 69). Used when the sample data is not at hand.
SAMPLE_SLICES_PER_CASE = {"brain": 139.0, "tumour": 69.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall milliseconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plan(config_path: Path, scale: str) -> Plan:
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["method_scale"] = scale
    config["methods"] = ["fuse4seg"]
    config["ablations"] = False
    # the cost does not depend on where the data lives: BraTS alone, its settings kept, no folder needed
    brats = {**config["datasets"]["brats"], "source": "synthetic", "path": None, "synthetic": {"n_cases": 2}}
    config["datasets"] = {"brats": brats}
    return Plan(validate_config(config, SCHEMA_PATH))


class Fuse4SegSteps:
    """The leader, the follower and one training step of each kind, for a given plan, batch and slice size."""

    def __init__(self, plan: Plan, batch: int, size: int, device: torch.device):
        spec = plan.find("brats", "fuse4seg", plan.config["seeds"][0])
        record = plan.record(spec)
        self.ctx = TrainContext(record.training, 0, Path("."), Path("."), record=record, device=str(device),
                                progress=lambda _: None)
        self.method = load_method("fuse4seg", record.hparams, record=record)
        self.leader = self.method.build_leader().to(device)
        self.follower = build_follower(record.follower.network).to(device)
        self.opt_l = torch.optim.AdamW(self.leader.parameters(), lr=1e-4)
        self.opt_f = torch.optim.AdamW(self.follower.parameters(), lr=1e-3)
        self.a = torch.rand(batch, 1, size, size, device=device)
        self.b = torch.rand(batch, 1, size, size, device=device)
        self.target = torch.randint(0, 4, (batch, size, size), device=device)
        half = torch.arange(batch, device=device)
        self.tr, self.val = half[: batch // 2], half[batch // 2:]

    def leader_step(self) -> None:
        with self.ctx.autocast():
            loss, _ = self.method.physical_loss(self.leader(self.a, self.b), self.a, self.b)
        self.ctx.step(loss, self.opt_l, self.leader)

    def follower_step(self) -> None:
        with self.ctx.autocast():
            loss = self.ctx.seg_loss(self.follower(self.method.prior(self.a, self.b)), self.target)
        self.ctx.step(loss, self.opt_f, self.follower)

    def outer_iteration(self) -> None:
        bilevel_iteration(self.method, self.ctx, self.leader, self.follower, self.opt_l, self.opt_f, self.a, self.b,
                          self.target, self.tr, self.val)

    # The same computations without optimiser steps and logged values, for counting FLOPs on the meta device.
    def _physical(self, out, a, b) -> torch.Tensor:
        return sum(weight * loss for weight, loss in self.method.physical_terms(out, a, b).values())

    def leader_work(self) -> None:
        self._physical(self.leader(self.a, self.b), self.a, self.b).backward()

    def follower_work(self) -> None:
        self.ctx.seg_loss(self.follower(self.method.prior(self.a, self.b)), self.target).backward()

    def outer_work(self) -> None:
        a, b, target, tr, val = self.a, self.b, self.target, self.tr, self.val
        with torch.no_grad():
            fused_tr = self.leader(a[tr], b[tr]).fused
        for _ in range(self.ctx.training.inner_steps):
            self.ctx.seg_loss(self.follower(fused_tr), target[tr]).backward()
        self.follower.requires_grad_(False)
        out = self.leader(a[val], b[val])
        seg = self.ctx.seg_loss(self.follower(out.fused), target[val])
        (self.method.semantic_weight * seg + self._physical(out, a[val], b[val])).backward()
        self.follower.requires_grad_(True)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def slices_per_case(keep, sample: Path) -> tuple[float, str]:
    """Mean training slices per BraTS case under ``keep``: measured on the sample cases when present."""
    if isinstance(keep, (int, float)):  # a ratio of non-tumour to tumour slices
        tumour, brain = slices_per_case("tumour", sample)[0], slices_per_case("brain", sample)[0]
        return min(brain, tumour * (1 + keep)), f"tumour slices x (1 + {keep}), at most the brain slices"
    if sample.is_dir():
        from ..data.brats import find_cases, load_case, slice_case

        counts = [len(slice_case(load_case(c, ("t1ce", "flair"), with_label=True), (192, 192), keep=keep).images)
                  for c in find_cases(sample)]
        return sum(counts) / len(counts), f"measured on {len(counts)} sample cases in {sample}"
    return SAMPLE_SLICES_PER_CASE[keep], "the sample's mean (sample data not found)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scale", choices=["test", "full"], default="test", help="networks of the measured steps")
    parser.add_argument("--size", type=int, default=64, help="slice size of the measured steps (paper: 192)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--config", type=Path, default=REPO / "workflows" / "config" / "paper.yaml")
    parser.add_argument("--tflops", type=float, default=100.0, help="sustained TFLOP/s of the GPU to project on")
    parser.add_argument("--sample-data", type=Path, default=REPO.parent / "shared" / "data" / "brats2018")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    # test scale: the synthetic default's networks (its follower too); full scale: the paper configuration's
    setting = DEFAULT_CONFIG if args.scale == "test" else args.config
    measured = Fuse4SegSteps(_plan(setting, args.scale), args.batch, args.size, device)
    n_params = sum(p.numel() for p in measured.leader.parameters())
    print(f"1. measured on {device} | {args.scale} networks (leader {n_params:,} parameters) | batch {args.batch} "
          f"x {args.size}x{args.size} | AMP {measured.ctx.training.amp and device.type == 'cuda'} | "
          f"threads {torch.get_num_threads()}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms = {"leader": timed(measured.leader_step, device, args.repeats),
               "follower": timed(measured.follower_step, device, args.repeats),
               "outer": timed(measured.outer_iteration, device, args.repeats)}
    pair = torch.rand(1, 1, 256, 256, device=device)
    with torch.no_grad():
        infer_ms = timed(lambda: measured.leader.eval()(pair, pair), device, args.repeats)
    k = measured.ctx.training.inner_steps
    print(f"   leader step (physical losses): {step_ms['leader']:9.1f} ms")
    print(f"   follower step (prior):         {step_ms['follower']:9.1f} ms")
    print(f"   bi-level outer iteration (K={k}): {step_ms['outer']:9.1f} ms")
    print(f"   inference, one 256x256 pair:   {infer_ms:9.1f} ms")
    print(f"   peak memory:                   {peak_memory_mb(device):9.1f} MiB")

    plan = _plan(args.config, "full")
    t = plan.training("brats", "fuse4seg")
    size = plan.datasets["brats"]["slice_size"][0]
    with torch.device("meta"):
        paper = Fuse4SegSteps(plan, t["batch_size"], size, torch.device("meta"))
        cost = {"leader": flops(paper.leader_work), "follower": flops(paper.follower_work),
                "outer": flops(paper.outer_work)}
    print(f"2. FLOPs per training step at {args.config.name} (full size, batch {t['batch_size']}, {size}x{size}, "
          f"K={t['inner_steps']}): leader {cost['leader'] / 1e12:.2f} TFLOP, follower {cost['follower'] / 1e12:.2f} "
          f"TFLOP, bi-level outer iteration {cost['outer'] / 1e12:.2f} TFLOP")

    ds = plan.datasets["brats"]
    per_case, source = slices_per_case(ds["keep"], args.sample_data)
    train_slices = BRATS2021_CASES * ds["split_fractions"][0] * per_case
    steps = train_slices / t["batch_size"]
    epochs = {"leader": t["fusion_epochs"], "follower": t["warmup_epochs"], "outer": t["bilevel_epochs"]}
    total = sum(epochs[k] * steps * cost[k] for k in epochs)
    print(f"3. BraTS 2021: {BRATS2021_CASES} cases x {ds['split_fractions'][0]} train x {per_case:.0f} slices "
          f"(keep {ds['keep']!r}: {source}) = {train_slices:,.0f} training slices, {steps:,.0f} steps per epoch")
    print(f"   schedule: {epochs['leader']} leader pre-training + {epochs['follower']} warm-up + {epochs['outer']} "
          f"bi-level epochs = {total / 1e15:,.0f} PFLOP -> {total / (args.tflops * 1e12) / 3600:,.1f} h at "
          f"{args.tflops:g} sustained TFLOP/s")
    if device.type == "cuda" and args.scale == "full" and args.size == size and args.batch == t["batch_size"]:
        hours = sum(epochs[k] * steps * step_ms[k] for k in epochs) / 1000 / 3600
        print(f"   from the measured steps on this GPU: {hours:,.1f} h")


if __name__ == "__main__":
    main()
