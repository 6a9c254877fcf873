"""Preprocessing speed check: full BraTS preprocessing vs merely decoding the same NIfTI files.

    python -m benchmark.perf.preprocess_speed [--data DIR] [--workers 2] [--slice-size 192 192]

Prints wall and CPU seconds (best of ``--repeats``) of three runs over the same cases and files (chosen
modalities + seg), all with the same number of worker threads and a warm page cache:
decode-only with nibabel's standard reader, decode-only with the pipeline's reader (``read_nifti``), and
the full ``preprocess_brats`` (validation, normalisation, slicing, HDF5 writing, splits). The target is
full <= 1.25 x decode. Then the time to read random training batches of 8 slices from the written store.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from torch.utils.data import default_collate

from benchmark.data.brats import find_cases, read_nifti
from benchmark.data.preprocess import preprocess_brats
from benchmark.data.store import SliceDataset

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "brats2018"
TARGET = 1.25


def _nibabel_decode(paths: Sequence[Path]) -> int:
    return sum(np.asanyarray(nib.load(p).dataobj).size for p in paths)


def _pipeline_decode(paths: Sequence[Path]) -> int:
    return sum(read_nifti(p)[0].size for p in paths)


def _timed(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best (wall, CPU of this process and its threads) seconds over ``repeats`` runs."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def batch_read_seconds(store: Path, batch_size: int = 8, n_batches: int = 50, seed: int = 0) -> list[float]:
    """Seconds to read and collate each of ``n_batches`` random batches (the first one opens the file)."""
    dataset = SliceDataset(store)
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n_batches):
        indices = rng.choice(len(dataset), size=min(batch_size, len(dataset)), replace=False)
        start = time.perf_counter()
        default_collate([dataset[int(i)] for i in indices])
        times.append(time.perf_counter() - start)
    dataset.close()
    return times


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BraTS root folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--modalities", nargs="+", default=["t1ce", "flair"])
    parser.add_argument("--slice-size", type=int, nargs=2, default=[192, 192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args(argv)

    cases = find_cases(args.data)
    files = [[case.path(key) for key in [*args.modalities, "seg"]] for case in cases]
    for path in (p for group in files for p in group):
        path.read_bytes()  # warm the page cache so that no run pays for the disk
    with ThreadPoolExecutor(args.workers) as pool:
        nib_wall, nib_cpu = _timed(lambda: list(pool.map(_nibabel_decode, files)), args.repeats)
        dec_wall, dec_cpu = _timed(lambda: list(pool.map(_pipeline_decode, files)), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        runs = iter(range(args.repeats))  # a fresh folder per run: replacing old stores is not preprocessing
        full_wall, full_cpu = _timed(lambda: preprocess_brats(
            args.data, Path(tmp) / str(next(runs)), modalities=args.modalities, slice_size=args.slice_size,
            workers=args.workers, progress=False), args.repeats)
        reads = batch_read_seconds(Path(tmp) / "0" / "train.h5", n_batches=args.batches)

    print(f"{len(cases)} cases, {sum(map(len, files))} files ({', '.join(args.modalities)}, seg), "
          f"{args.workers} workers, slices {args.slice_size[0]}x{args.slice_size[1]}, best of {args.repeats}")
    print(f"{'':34s}{'wall s':>9s}{'CPU s':>9s}")
    for label, wall, cpu in (("decode only (nibabel standard)", nib_wall, nib_cpu),
                             ("decode only (pipeline reader)", dec_wall, dec_cpu),
                             ("full preprocessing", full_wall, full_cpu)):
        print(f"{label:34s}{wall:9.2f}{cpu:9.2f}")
    for label, wall, cpu in (("nibabel decode", nib_wall, nib_cpu), ("pipeline-reader decode", dec_wall, dec_cpu)):
        ratio = full_wall / wall
        print(f"full / {label}: {ratio:.2f} wall, {full_cpu / cpu:.2f} CPU "
              f"({'within' if ratio <= TARGET else 'OVER'} the {TARGET} target)")
    print(f"random batch of 8 slices: median {1e3 * statistics.median(reads[1:] or reads):.1f} ms, "
          f"first (opens the file) {1e3 * reads[0]:.1f} ms, over {len(reads)} batches")
    return {"nibabel_decode_s": nib_wall, "decode_s": dec_wall, "full_s": full_wall,
            "batch_ms": 1e3 * statistics.median(reads[1:] or reads)}


if __name__ == "__main__":
    main()
