"""Fuse4Seg speed and memory: ``python -m benchmark.perf.fuse4seg_speed [--device cuda] [--size 192]``.

Prints, for the leader at a given width and input size: forward+backward ms, one bi-level outer iteration
(K follower steps on half a batch + one leader step on the other half) ms, inference ms for one 256 x 256
pair, and peak memory (CUDA: torch's peak allocation; CPU: the process's peak resident set). On CUDA it
also measures AMP training throughput at the paper's batch 8 and estimates the hours of the paper's
schedule (40 warm-up + 120 bi-level epochs) on BraTS 2021 (1251 cases).
"""

from __future__ import annotations

import argparse
import resource
import time
from types import SimpleNamespace

import torch

from benchmark.methods import load_method
from benchmark.training.bilevel import bilevel_iteration
from benchmark.training.follower import build_follower
from benchmark.training.loop import autocast, clip_and_step
from benchmark.training.losses import segmentation_loss


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="training slice size (paper scale: 192)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--scale", choices=["test", "full"], default="full", help="method hyper-parameters")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    hparams = dict(load_method("fuse4seg").test_config) if args.scale == "test" else {}
    method = load_method("fuse4seg", hparams)
    follower_cfg = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "bottleneck_heads": 2} if args.scale == "test" else {}
    leader = method.build_leader().to(device)
    follower = build_follower(follower_cfg).to(device)
    amp = device.type == "cuda"
    train = TrainingConfig(amp=amp, inner_steps=3)
    engine = SimpleNamespace(
        train=train, device=device, method=method,
        seg_loss=lambda logits, target: segmentation_loss(logits.float(), target),
        step=lambda loss, opt, module: clip_and_step(loss, opt, module.parameters(), train.grad_clip),
    )
    opt_l = torch.optim.AdamW(leader.parameters(), lr=1e-4)
    opt_f = torch.optim.AdamW(follower.parameters(), lr=1e-3)
    b, s = args.batch, args.size
    a_src, b_src = torch.rand(b, 1, s, s, device=device), torch.rand(b, 1, s, s, device=device)
    target = torch.randint(0, 4, (b, s, s), device=device)
    half = torch.arange(b, device=device)
    tr, val = half[: b // 2], half[b // 2:]

    def leader_step():
        with autocast(device, amp):
            out = leader(a_src, b_src)
            loss, _ = method.physical_loss(out, a_src, b_src)
        clip_and_step(loss, opt_l, leader.parameters(), train.grad_clip)

    def follower_step():
        with autocast(device, amp):
            loss = engine.seg_loss(follower(0.5 * (a_src + b_src)), target)
        clip_and_step(loss, opt_f, follower.parameters(), train.grad_clip)

    def outer_iteration():
        bilevel_iteration(engine, leader, follower, opt_l, opt_f, a_src, b_src, target, tr, val)

    pair_a, pair_b = torch.rand(1, 1, 256, 256, device=device), torch.rand(1, 1, 256, 256, device=device)

    @torch.no_grad()
    def inference():
        leader.eval()
        with autocast(device, amp):
            leader(pair_a, pair_b)

    n_params = sum(p.numel() for p in leader.parameters())
    print(f"device {device} | leader {args.scale} ({n_params:,} parameters) | batch {b} x {s}x{s} | AMP {amp} | "
          f"threads {torch.get_num_threads()}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_ms = timed(leader_step, device, args.repeats)
    print(f"leader forward+backward+step: {step_ms:9.1f} ms")
    follower_ms = timed(follower_step, device, args.repeats)
    print(f"follower step (warm-up, average prior): {follower_ms:9.1f} ms")
    outer_ms = timed(outer_iteration, device, args.repeats)
    print(f"bi-level outer iteration (K={train.inner_steps} follower steps + 1 leader step): {outer_ms:9.1f} ms")
    infer_ms = timed(inference, device, args.repeats)
    print(f"inference, one 256x256 pair: {infer_ms:9.1f} ms")
    print(f"peak memory: {peak_memory_mb(device):9.1f} MiB")
    if device.type == "cuda":
        slices_per_s = b / (outer_ms / 1000)
        # BraTS 2021: 1251 cases; ~60% train at ~100 tumour-bearing slices each (keep: tumour) is our estimate.
        train_slices = int(1251 * 0.6 * 100)
        warmup_s = 40 * train_slices / b * follower_ms / 1000
        bilevel_s = 120 * train_slices / slices_per_s
        print(f"AMP bi-level throughput: {slices_per_s:9.1f} slices/s")
        print(f"estimated paper schedule on BraTS 2021 (~{train_slices:,} training slices, our estimate): "
              f"{(warmup_s + bilevel_s) / 3600:.1f} h")


if __name__ == "__main__":
    main()
