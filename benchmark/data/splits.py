"""Patient-level splits: the train/val/test file of a dataset and the per-batch D_tr / D_val partition.

Every split is made by patient (BraTS case, Harvard study, GFP group), never by slice, because slices of one
patient are near duplicates; a patient in two splits would leak test data into training.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from ..atomic import write_text_atomic
from . import DataError

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three non-negative fractions summing to 1 with a non-empty training split."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6) or fr[0] == 0:
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1 with train > 0, got {fractions}")
    return fr


def _counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder allocation of n patients, then at least one patient per split with a positive fraction."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if fractions[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


def make_splits(patients: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> dict[str, Any]:
    """Random patient-level split: ``{"seed", "fractions", "train", "val", "test"}`` with sorted id lists."""
    fractions = check_fractions(fractions)
    ids = sorted(set(patients))
    needed = sum(f > 0 for f in fractions)
    if len(ids) < needed:
        raise DataError(f"{len(ids)} patient(s) cannot fill {needed} non-empty splits with fractions {list(fractions)}; "
                        f"need at least {needed} patients (or set some fractions to 0)")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    bounds = np.cumsum([0] + _counts(len(ids), fractions))
    splits: dict[str, Any] = {"seed": int(seed), "fractions": list(fractions)}
    for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        splits[name] = sorted(order[lo:hi])
    return splits


def assert_disjoint(splits: dict[str, Any]) -> None:
    """DataError naming any patient found in two splits."""
    seen: dict[str, str] = {}
    for name in SPLITS:
        for patient in splits.get(name, []):
            if patient in seen:
                raise DataError(f"patient {patient!r} is in both the {seen[patient]} and the {name} split")
            seen[patient] = name


def load_or_make_splits(path: Path | str, patients: Sequence[str], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                        seed: int = 0) -> dict[str, Any]:
    """The split file at ``path`` if present and consistent with the patients, seed and fractions, else a new split.

    Nothing is written here (see ``write_splits``): a run that fails later leaves no stale file behind.
    """
    path = Path(path)
    if not path.exists():
        return make_splits(patients, fractions, seed)
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        listed = {p for name in SPLITS for p in splits[name]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a valid split file ({exc}); delete it to re-split") from exc
    assert_disjoint(splits)
    wanted = {"seed": int(seed), "fractions": list(check_fractions(fractions))}
    for key, value in wanted.items():
        if key in splits and splits[key] != value:
            raise DataError(f"{path}: made with {key} {splits[key]}, but {value} was asked; delete it to re-split")
    gone, new = sorted(listed - set(patients)), sorted(set(patients) - listed)
    if gone:
        raise DataError(f"{path}: names patients that no longer exist in the data: {gone}; delete it to re-split")
    if new:
        raise DataError(f"{path}: patients {new} are in the data but in no split; delete it to re-split")
    return splits


def write_splits(path: Path | str, splits: dict[str, Any]) -> Path:
    """Write the split file atomically (temporary name in the same folder, then rename)."""
    assert_disjoint(splits)
    return write_text_atomic(path, json.dumps(splits, indent=1) + "\n")


class PatientBatchSampler(Sampler[list[int]]):
    """Batches of item indices, each holding slices of at least ``min_patients`` distinct patients.

    Per epoch: a random subset (all items unless ``drop_last``) is ordered patient by patient (random patient
    order, random order within a patient) and dealt round-robin into the batches, so each batch draws from
    patients spread along that order; a patient fills a whole batch only if it owns almost all items, which
    raises ValueError. Without ``drop_last`` the remainder is spread, giving batches of ``batch_size`` or
    ``batch_size - 1`` items instead of one short last batch. Deterministic per (seed, epoch).
    """

    def __init__(self, patients: Sequence[Hashable], batch_size: int, seed: int = 0, min_patients: int = 2,
                 drop_last: bool = False):
        names, self._codes = np.unique(np.asarray(list(patients), dtype=object).astype(str), return_inverse=True)
        self.n_patients = len(names)
        self.required = min(min_patients, self.n_patients)
        if batch_size < max(1, self.required):
            raise ValueError(f"batch_size {batch_size} cannot hold {self.required} patients")
        self.batch_size, self.seed, self.drop_last = int(batch_size), int(seed), drop_last
        self.epoch = 0
        self._batches(0)  # fail at construction, not mid-training, when the patients cannot be mixed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self._codes)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        n_batches = len(self)
        if n_batches == 0:
            return []
        chosen = rng.permutation(len(self._codes))[: n_batches * self.batch_size if self.drop_last else None]
        patient_rank = rng.permutation(self.n_patients)[self._codes[chosen]]
        stream = chosen[np.argsort(patient_rank, kind="stable")]
        batches = [stream[j::n_batches] for j in range(n_batches)]
        for batch in batches:
            if len(np.unique(self._codes[batch])) < self.required:
                raise ValueError(f"cannot deal {len(self._codes)} items of {self.n_patients} patients into {n_batches} "
                                 f"batches with {self.required} patients each (largest patient: "
                                 f"{np.bincount(self._codes).max()} items); lower batch_size or min_patients")
        return [batches[j].tolist() for j in rng.permutation(n_batches)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches(self.epoch))


def partition_by_patient(patient_ids: Sequence[Hashable], val_fraction: float = 0.5,
                         generator: torch.Generator | None = None,
                         seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a batch's positions into two patient-disjoint, non-empty groups (D_tr, D_val) as index tensors.

    About ``val_fraction`` of the batch's patients (at least one, at most all but one) go to D_val, drawn with
    ``generator`` (or a generator seeded by ``seed``; the global torch RNG when neither is given).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    ids = list(patient_ids)
    unique = list(dict.fromkeys(ids))
    if len(unique) < 2:
        raise ValueError(f"a batch needs slices of two or more patients to be split, got {unique}")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    n_val = min(max(round(len(unique) * val_fraction), 1), len(unique) - 1)
    val_patients = {unique[i] for i in torch.randperm(len(unique), generator=generator)[:n_val].tolist()}
    is_val = [p in val_patients for p in ids]
    tr = torch.tensor([i for i, v in enumerate(is_val) if not v], dtype=torch.long)
    val = torch.tensor([i for i, v in enumerate(is_val) if v], dtype=torch.long)
    return tr, val
