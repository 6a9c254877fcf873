"""Trained run + test store -> score tables and the example arrays that the figures show.

BraTS: every test slice is segmented; scores are computed per patient on the volume reassembled from
its slices (or per slice / pooled, as configured) with ``metrics.segmentation``. Paired data: every test
pair is fused and scored with the seven fusion metrics of ``metrics.fusion`` on the luminance, and the
fused images are written as PNG (colour rebuilt from the functional image's Cb/Cr where it has colour).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data.colour import rebuild_rgb, to_uint8
from .data.store import SliceDataset
from .trained import TrainedRun
from .atomic import write_atomic
from .training.checkpoint import write_json


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.17g"))


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    write_atomic(path, write)


def example_indices(labels: np.ndarray, patients: list[str], n: int) -> list[int]:
    """The slices shown in figures: largest tumour area, one per patient first; the same for every run."""
    area = (labels > 0).reshape(len(labels), -1).sum(1)
    order = sorted(range(len(labels)), key=lambda i: (-int(area[i]), i))
    chosen, seen = [], set()
    for i in order:
        if patients[i] not in seen:
            chosen.append(i)
            seen.add(patients[i])
        if len(chosen) == n:
            return sorted(chosen)
    rest = [i for i in order if i not in chosen]
    return sorted(chosen + rest[: n - len(chosen)])


def _predict_all(run: TrainedRun, dataset: SliceDataset, batch_size: int) -> dict[str, Any]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    out: dict[str, list] = {"images": [], "fused": [], "prediction": [], "label": [], "chroma": [],
                            "patient": [], "slice_index": []}
    for batch in tqdm(loader, desc=f"evaluate {run.run_dir}", unit="batch", leave=False):
        images = batch["images"]
        out["images"].append(images.numpy())
        if run.fuses:
            out["fused"].append(run.fuse(images[:, :1], images[:, 1:2])[:, 0].cpu().numpy())
        if "label" in batch:
            out["label"].append(batch["label"].numpy().astype(np.uint8))
            out["prediction"].append(run.segment(images).argmax(1).cpu().numpy().astype(np.uint8))
        if "chroma" in batch:
            out["chroma"].append(batch["chroma"].numpy())
        out["patient"] += list(batch["patient"])
        out["slice_index"] += [int(i) for i in batch["slice_index"]]
    out["name"] = [str(n) for n in dataset.names]  # the loader keeps the store's order
    return {k: (np.concatenate(v) if v and isinstance(v[0], np.ndarray) else v) for k, v in out.items()}


def evaluate_run(run_dir: Path, store_dir: Path, device: str = "auto") -> list[Path]:
    """Score ``run_dir`` on ``store_dir/test.h5``; returns the files written into ``run_dir``."""
    run_dir, store_dir = Path(run_dir), Path(store_dir)
    run = TrainedRun(run_dir, device)
    settings = run.info["config"]["evaluation"]
    dataset = SliceDataset(store_dir / "test.h5")
    if len(dataset) == 0:
        raise ValueError(f"{store_dir / 'test.h5'}: the test split holds no slices")
    res = _predict_all(run, dataset, settings.get("batch_size", 16))
    has_colour = isinstance(res["fused"], np.ndarray) and isinstance(res["chroma"], np.ndarray)
    res["fused_rgb"] = rebuild_rgb(res["fused"], res["chroma"]) if has_colour else None
    written: list[Path] = []
    if run.info["dataset_kind"] == "brats":
        from metrics.segmentation import per_patient_scores

        table = per_patient_scores(
            res["prediction"], res["label"], res["patient"], res["slice_index"],
            empty_rule=settings["empty_rule"], aggregation=settings["aggregation"],
        )
        _write_csv(run_dir / "seg_scores.csv", table)
        write_json(run_dir / "seg_scores.json", {
            "aggregation": settings["aggregation"], "empty_rule": settings["empty_rule"],
            "labels": {"1": "NCR", "2": "ED", "3": "ET"}, "n_slices": len(res["name"]),
        })
        written += [run_dir / "seg_scores.csv", run_dir / "seg_scores.json"]
        idx = example_indices(res["label"], res["patient"], settings["n_examples"])
    else:
        from metrics.fusion import score_stack

        a, b, f = (to_uint8(x) for x in (res["images"][:, 0], res["images"][:, 1], res["fused"]))
        table = score_stack(a, b, f, convention=settings["fusion_convention"], names=res["name"])
        _write_csv(run_dir / "fusion_scores.csv", table)
        write_json(run_dir / "fusion_scores.json", {"convention": settings["fusion_convention"], "n_images": len(table)})
        written += [run_dir / "fusion_scores.csv", run_dir / "fusion_scores.json"]
        written += _write_fused_pngs(run_dir / "fused", res)
        idx = list(range(min(settings["n_examples"], len(res["name"]))))
    written.append(_write_examples(run_dir / "examples.npz", res, idx))
    return written


def _write_fused_pngs(folder: Path, res: dict[str, Any]) -> list[Path]:
    shutil.rmtree(folder, ignore_errors=True)  # no stale images of an earlier evaluation
    folder.mkdir(parents=True)
    rgb = res["fused_rgb"]
    paths = []
    for i, name in enumerate(res["name"]):
        image = Image.fromarray(to_uint8(rgb[i]) if rgb is not None else to_uint8(res["fused"][i]))
        path = folder / f"{name}.png"
        write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))
        paths.append(path)
    return paths


def _write_examples(path: Path, res: dict[str, Any], idx: list[int]) -> Path:
    arrays = {"sources": res["images"][idx], "name": np.array([res["name"][i] for i in idx])}
    if isinstance(res["fused"], np.ndarray):
        arrays["fused"] = res["fused"][idx]
    rgb = res["fused_rgb"]
    if rgb is not None:
        arrays["fused_rgb"] = rgb[idx]
        arrays["chroma"] = res["chroma"][idx]
    if isinstance(res["label"], np.ndarray):
        arrays["label"] = res["label"][idx]
        arrays["prediction"] = res["prediction"][idx]
    _write_npz(path, arrays)
    return path
