"""Trained run + test store -> score tables and the example arrays that the figures show.

BraTS: every test slice is segmented (the follower on the run's fused test store, or a segmentation method on
the stacked sources); scores are computed per patient on the volume reassembled from its slices (or per slice,
as configured) with ``metrics.segmentation``. Paired data: the run's fused test store is scored against the
sources with the seven fusion metrics of ``metrics.fusion`` on the luminance, and the fused images are written
as PNG (colour rebuilt from the functional image's Cb/Cr where it has colour). The settings (``evaluation``
section of the workflow config) are an argument, not part of the run, so changing them retrains nothing.

Before scoring, the run is checked against the test store: no test patient may be among the patients its models
trained on (``run.json``, also the follower's), and its fused test store must come from its current model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from .atomic import write_atomic
from .data import DataError
from .data.colour import rebuild_rgb, to_uint8
from .data.store import SliceDataset, read_store_attrs
from .record import FOLLOWER_DIR, FUSED_STORE, RecordError, RunConfig, read_json
from .trained import TrainedRun
from .training.checkpoint import model_fingerprint, write_json


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


def _collect(run_dir: Path, record: RunConfig, sources: SliceDataset, fused: SliceDataset | None,
             batch_size: int, device: str) -> dict[str, Any]:
    """Every test slice's sources, fused image and (BraTS) label and prediction, in store order."""
    run = TrainedRun(run_dir, device) if record.labelled else None
    out: dict[str, list] = {"images": [], "fused": [], "prediction": [], "label": [], "chroma": [],
                            "patient": [], "slice_index": []}
    loaders = [DataLoader(sources, batch_size=batch_size, shuffle=False)]
    if fused is not None:
        loaders.append(DataLoader(fused, batch_size=batch_size, shuffle=False))
    for batch, *fused_batch in tqdm(zip(*loaders), total=len(loaders[0]), desc=f"evaluate {run_dir}",
                                    unit="batch", leave=False):
        images = batch["images"]
        out["images"].append(images.numpy())
        if fused_batch:
            out["fused"].append(fused_batch[0]["images"][:, 0].numpy())
        if "label" in batch:
            out["label"].append(batch["label"].numpy().astype(np.uint8))
            logits = run.segment_fused(fused_batch[0]["images"]) if fused_batch else run.segment(images)
            out["prediction"].append(logits.argmax(1).cpu().numpy().astype(np.uint8))
        if "chroma" in batch:
            out["chroma"].append(batch["chroma"].numpy())
        out["patient"] += list(batch["patient"])
        out["slice_index"] += [int(i) for i in batch["slice_index"]]
    out["name"] = [str(n) for n in sources.names]  # the loaders keep the stores' order
    return {k: (np.concatenate(v) if v and isinstance(v[0], np.ndarray) else v) for k, v in out.items()}


def check_unseen(run_dir: Path, record: RunConfig, patients: Sequence[str], where: Path) -> None:
    """RecordError unless none of ``patients`` (those of the store at ``where``) was in the training data of the
    run's models, as their ``run.json`` lists it."""
    folders = [run_dir] + ([run_dir / FOLLOWER_DIR] if record.pipeline == "disjoint" else [])
    for folder in folders:
        info = read_json(folder / "run.json")
        if "patients" not in info:
            raise RecordError(f"{folder / 'run.json'}: lists no training patients (written by an older version); "
                              "retrain the run")
        seen = {p: split for split, names in info["patients"].items() for p in names}
        leaked = sorted(set(patients) & set(seen))
        if leaked:
            shown = ", ".join(f"{p} ({seen[p]})" for p in leaked)
            raise RecordError(f"{where}: patients {shown} are in the {folder / 'model.safetensors'} model's training "
                              "data; the store was re-split after training: retrain the run")


def _test_stores(run_dir: Path, store_dir: Path, record: RunConfig) -> tuple[SliceDataset, SliceDataset | None]:
    """The test store and, for runs that fuse, the run's fused test store, checked to hold the same slices and to
    come from the run's current model."""
    sources = SliceDataset(store_dir / "test.h5")
    if len(sources) == 0:
        raise DataError(f"{sources.path}: the test split holds no slices")
    check_unseen(run_dir, record, sorted(set(sources.patients)), sources.path)
    if not record.fuses:
        return sources, None
    fused = SliceDataset(run_dir / FUSED_STORE / "test.h5")
    if list(fused.names) != list(sources.names):
        raise DataError(f"{fused.path}: does not hold the slices of {sources.path} in the same order "
                        "(fused from another store? re-run the fuse rule)")
    model = run_dir / "model.safetensors"
    made_by, current = read_store_attrs(fused.path).get("model_fingerprint"), model_fingerprint(model)
    if made_by != current:
        raise RecordError(f"{fused.path}: fused by another model (fingerprint {made_by}) than {model} ({current}); "
                          "re-run the fuse rule")
    return sources, fused


def evaluate_run(run_dir: Path, store_dir: Path, settings: dict[str, Any], device: str = "auto") -> list[Path]:
    """Score ``run_dir`` on ``store_dir/test.h5`` under the ``evaluation`` settings; returns the files written."""
    run_dir, store_dir = Path(run_dir), Path(store_dir)
    record = RunConfig.of_run_dir(run_dir)
    sources, fused = _test_stores(run_dir, store_dir, record)
    res = _collect(run_dir, record, sources, fused, settings.get("batch_size", 16), device)
    has_colour = isinstance(res["fused"], np.ndarray) and isinstance(res["chroma"], np.ndarray)
    res["fused_rgb"] = rebuild_rgb(res["fused"], res["chroma"]) if has_colour else None
    written: list[Path] = []
    if record.labelled:
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
