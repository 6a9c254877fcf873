"""Raw dataset folder -> ``{train,val,test}.h5`` slice stores + ``splits.json`` (formats: docs/DESIGN.md).

All three stores are written to temporary files and renamed only once every case succeeded; ``splits.json``
is written last. A failure therefore leaves the previous outputs (or nothing) in place, never a partial store.
The store folder is locked meanwhile: a second preprocessing of the same folder stops at once with a message.
"""
from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..atomic import folder_lock
from . import DataError
from .brats import LABEL_VALUES, Keep, check_keep, check_modalities, find_cases, process_case
from .paired import load_paired
from .splits import SPLITS, load_or_make_splits, write_splits
from .store import StoreWriter
from .window import as_size

SPLITS_FILE = "splits.json"


@contextmanager
def _writers(out: Path, attrs: dict[str, dict[str, Any]] | None = None, **store: Any) -> Iterator[dict[str, StoreWriter]]:
    """One writer per split (``attrs``: extra file attributes per split); if anything fails, all three
    temporary files are discarded."""
    attrs = attrs or {}
    with ExitStack() as stack:
        yield {name: stack.enter_context(StoreWriter(out / f"{name}.h5", attrs={"split": name, **attrs.get(name, {})},
                                                     **store))
               for name in SPLITS}


def _ordered(pool: Executor, fn: Callable[[Any], Any], items: Iterable[Any], ahead: int) -> Iterator[Any]:
    """``pool.map`` with at most ``ahead`` tasks in flight, so finished cases never pile up in memory."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _outputs(out: Path) -> dict[str, Path]:
    return {**{name: out / f"{name}.h5" for name in SPLITS}, "splits": out / SPLITS_FILE}


def preprocess_brats(
    raw_root: Path | str,
    out_dir: Path | str,
    *,
    modalities: Sequence[str] = ("t1ce", "flair"),
    slice_size: int | Sequence[int] = (192, 192),
    keep: Keep = "brain",
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    workers: int = 2,
    label_convention: str = "auto",
    progress: bool = True,
) -> dict[str, Path]:
    """BraTS cases -> slice stores. ``keep`` applies to train and val; test keeps every brain slice so that
    3-D metrics can be computed on reassembled volumes. ``seed`` drives both the patient split and the
    ratio draw of ``keep``.

    Cases run in a pool of ``workers`` threads, not processes: a case's slices weigh ~40 MB of float32,
    which a process pool would have to pickle through a pipe at a cost close to decoding the case, while
    gzip decoding (zlib) and the numpy work release the GIL and so run in parallel anyway.
    """
    modalities, size, keep = check_modalities(modalities), as_size(slice_size), check_keep(keep)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if label_convention != "auto" and label_convention not in LABEL_VALUES:
        raise ValueError(f"label_convention must be 'auto' or one of {list(LABEL_VALUES)}, got {label_convention!r}")
    out = Path(out_dir)
    with folder_lock(out, "preprocess"):
        cases = find_cases(raw_root)
        conventions = {c.naming for c in cases} if label_convention == "auto" else {label_convention}
        if len(conventions) > 1:
            raise DataError(f"{raw_root}: mixes the 2018-2021 and 2023+ BraTS namings; set label_convention")
        convention = conventions.pop()
        splits = load_or_make_splits(out / SPLITS_FILE, [c.case_id for c in cases], split_fractions, seed)
        split_of = {patient: name for name in SPLITS for patient in splits[name]}
        cases.sort(key=lambda c: (SPLITS.index(split_of[c.case_id]), c.case_id))

        def run(case):
            split_keep = "brain" if split_of[case.case_id] == "test" else keep
            return process_case(case, modalities, size, split_keep, seed, label_convention)

        keep_of = {name: {"keep": json.dumps("brain" if name == "test" else keep)} for name in SPLITS}
        store = dict(kind="brats", modalities=modalities, slice_size=size, labels=True, label_convention=convention)
        with _writers(out, keep_of, **store) as writers, ThreadPoolExecutor(workers) as pool, \
                tqdm(total=len(cases), desc="BraTS cases", unit="case", disable=not progress) as bar:
            try:
                for case, sliced in zip(cases, _ordered(pool, run, cases, ahead=2 * workers)):
                    writer = writers[split_of[case.case_id]]
                    writer.append(sliced.images, labels=sliced.labels, patient=[case.case_id] * len(sliced.images),
                                  slice_index=sliced.slice_index,
                                  name=[f"{case.case_id}_z{z}" for z in sliced.slice_index])
                    writer.add_geometry(case.case_id, shape=sliced.shape, affine=sliced.affine, crop=sliced.crop)
                    bar.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        write_splits(out / SPLITS_FILE, splits)
    return _outputs(out)


def preprocess_paired(
    raw_root: Path | str,
    out_dir: Path | str,
    *,
    anatomical: str = "MRI",
    functional: str | None = None,
    size: int | Sequence[int] | None = None,
    on_mismatch: str = "skip",
    split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> dict[str, Path]:
    """Harvard / GFP-PC pairs -> slice stores (no labels; ``chroma`` for colour functional images).
    ``functional`` None detects the layout; see ``benchmark.data.paired`` for grouping and size rules."""
    out = Path(out_dir)
    with folder_lock(out, "preprocess"):
        data = load_paired(raw_root, anatomical=anatomical, functional=functional, size=size,
                           on_mismatch=on_mismatch)
        splits = load_or_make_splits(out / SPLITS_FILE, data.patients, split_fractions, seed)
        patients = np.asarray(data.patients)
        store = dict(kind="paired", modalities=data.modalities, slice_size=data.images.shape[-2:], labels=False,
                     chroma=data.chroma is not None)
        with _writers(out, **store) as writers:
            for name, writer in writers.items():
                chosen = np.flatnonzero(np.isin(patients, splits[name]))
                writer.append(data.images[chosen], chroma=None if data.chroma is None else data.chroma[chosen],
                              patient=patients[chosen].tolist(), slice_index=np.arange(len(chosen)),
                              name=[data.names[i] for i in chosen])
        write_splits(out / SPLITS_FILE, splits)
    return _outputs(out)
