"""Every method's cost: ``python -m benchmark.perf.method_speed [--methods a b] [--full] [--threads 2]``.

For each method, at the synthetic default's scale (``method_scale: test``, the default config's data): the time
of one training batch in each stage of its own recipe on BraTS phantoms (and on paired phantoms for fusion
methods), and the inference time per slice (a fused image, or a segmentation of the stacked sources). With
``--full``, also one forward of the full-size networks on a 256 x 256 pair (a 224 x 224 slice for methods that
need it is the method's own business: it pads or resizes inside ``segment``). Peak resident memory is printed
at the end (CPU) or the peak CUDA allocation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from ..data.preprocess import preprocess_brats, preprocess_paired
from ..data.store import SliceDataset
from ..data.synthetic import write_brats_phantoms, write_paired_phantoms
from ..methods import load_method
from ..training.context import TrainContext
from ..training.follower import build_follower
from ..workflow import SCHEMA_PATH, Plan, validate_config
from .fuse4seg_speed import DEFAULT_CONFIG, peak_memory_mb


def _stores(root: Path, config: dict) -> dict[str, Path]:
    brats = config["datasets"]["brats"]
    write_brats_phantoms(root / "raw_brats", **brats["synthetic"])
    preprocess_brats(root / "raw_brats", root / "brats", slice_size=brats["slice_size"], workers=1, progress=False)
    spect = config["datasets"]["harvard_mri_spect"]
    options = {k: v for k, v in spect["synthetic"].items()}
    pair = options.pop("pair")
    write_paired_phantoms(root / "raw_spect", pair, **options)
    preprocess_paired(root / "raw_spect", root / "spect", functional=spect["functional"])
    return {"brats": root / "brats", "harvard_mri_spect": root / "spect"}


def _ms(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000


def training_batches(plan: Plan, spec, store: Path, device: str, batches: int) -> list[tuple[str, float]]:
    """(stage, ms per batch) of the first epoch of each stage of the run's recipe, ``batches`` batches each."""
    record = plan.record(spec)
    record = dataclasses.replace(record, training={**record.training, "max_batches_per_epoch": batches})
    with tempfile.TemporaryDirectory() as out:
        ctx = TrainContext(record.training, record.seed, store, Path(out), record=record, device=device,
                           progress=lambda _: None)
        method = load_method(record.method, record.hparams, record=record)
        torch.manual_seed(0)
        nets = method.networks()
        if record.pipeline == "joint":
            nets["follower"] = build_follower(record.follower.network)
        nets = {k: v.to(ctx.device) for k, v in nets.items()}
        ctx.state.modules = nets
        rows = []
        for stage in method.stages(ctx, nets):
            if stage.epochs == 0:
                continue
            elapsed = _ms(lambda: stage.run_epoch(0, stage.epochs), ctx.device)
            n = min(batches, -(-len(ctx.dataset()) // ctx.training.batch_size))
            rows.append((stage.name, elapsed / max(n, 1)))
        return rows


@torch.no_grad()
def inference_per_slice(plan: Plan, spec, store: Path, device: torch.device, batch: int = 16) -> float:
    """Milliseconds per test slice of the method's fusion (``fuse``) or segmentation (``segment``)."""
    record = plan.record(spec)
    method = load_method(record.method, record.hparams, record=record)
    nets = {k: v.to(device).eval() for k, v in method.networks().items()}
    test = SliceDataset(store / "test.h5")
    batch = min(batch, len(test))
    images = torch.stack([test[i]["images"] for i in range(batch)]).to(device)
    if record.kind == "multichannel":
        run = lambda: method.segment(nets, images)  # noqa: E731
    else:
        run = lambda: method.fuse(nets, images[:, :1], images[:, 1:2])  # noqa: E731
    run()
    return _ms(run, device) / batch


@torch.no_grad()
def full_size_forward(name: str, kind: str, device: torch.device, overrides: dict | None = None) -> float:
    """Milliseconds of one forward of the full-size networks on a 256 x 256 pair (two stacked channels);
    ``overrides``: hyper-parameters changed for the measurement (e.g. fewer sampling steps of a diffusion method)."""
    method = load_method(name, overrides)
    nets = {k: v.to(device).eval() for k, v in method.networks().items()}
    a, b = torch.rand(1, 1, 256, 256, device=device), torch.rand(1, 1, 256, 256, device=device)
    if kind == "multichannel":
        return _ms(lambda: method.segment(nets, torch.cat([a, b], dim=1)), device)
    return _ms(lambda: method.fuse(nets, a, b), device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", help="method names (default: every runnable method)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, default=3, help="training batches timed per stage")
    parser.add_argument("--full", action="store_true", help="also time one full-size forward on a 256 x 256 pair")
    parser.add_argument("--full-overrides", type=json.loads, default={},
                        help='hyper-parameters per method for the full-size forward, e.g. \'{"ddfm": {"sampling_steps": 2}}\'')
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = validate_config(yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8")), SCHEMA_PATH)
    if args.methods:
        config["methods"] = args.methods
    plan = Plan(config)
    print(f"device {device}, threads {torch.get_num_threads()}, default config's scale (method_scale: test)")
    with tempfile.TemporaryDirectory() as tmp:
        stores = _stores(Path(tmp), config)
        for name, info in plan.methods.items():
            for dataset in ("brats", "harvard_mri_spect"):
                if not info.runs_on(plan.dataset_kind(dataset)):
                    continue
                spec = plan.find(dataset, name, config["seeds"][0])
                stages = training_batches(plan, spec, stores[dataset], args.device, args.batches)
                shown = ", ".join(f"{stage} {ms:.0f}" for stage, ms in stages) or "nothing to train"
                per_slice = inference_per_slice(plan, spec, stores[dataset], device)
                print(f"{name:18s} {dataset:18s} train ms/batch: {shown}; inference {per_slice:.1f} ms/slice")
            if args.full:
                changed = args.full_overrides.get(name)
                ms = full_size_forward(name, info.kind, device, changed)
                print(f"{name:18s} full size: one 256x256 forward {ms:.0f} ms" + (f" (with {changed})" if changed else ""))
    print(f"peak memory: {peak_memory_mb(device):.0f} MiB")


if __name__ == "__main__":
    main()
