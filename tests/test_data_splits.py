"""Patient-level splits, the split file, the patient-mixing batch sampler and the per-batch partition."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmark.data import DataError
from benchmark.data.splits import (PatientBatchSampler, assert_disjoint, load_or_make_splits, make_splits,
                                   partition_by_patient, write_splits)

PATIENTS = [f"P{i:02d}" for i in range(10)]


def test_make_splits_is_a_seeded_partition():
    splits = make_splits(PATIENTS, seed=1)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == PATIENTS
    assert_disjoint(splits)
    assert make_splits(PATIENTS[::-1], seed=1) == splits  # input order does not matter
    assert any(make_splits(PATIENTS, seed=s)["test"] != splits["test"] for s in range(2, 6))


def test_every_non_empty_split_gets_a_patient():
    assert [len(v) for k, v in make_splits(PATIENTS[:3]).items() if k in ("train", "val", "test")] == [1, 1, 1]
    six = make_splits(PATIENTS[:6], (0.5, 0.17, 0.33))
    assert [len(six[k]) for k in ("train", "val", "test")] == [3, 1, 2]
    no_val = make_splits(PATIENTS[:2], (0.5, 0.0, 0.5))
    assert (len(no_val["train"]), no_val["val"], len(no_val["test"])) == (1, [], 1)
    with pytest.raises(DataError, match="2 patient.*need at least 3"):
        make_splits(PATIENTS[:2])
    for bad in ((0.5, 0.5), (0.7, 0.2, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)):
        with pytest.raises(ValueError):
            make_splits(PATIENTS, bad)


def test_assert_disjoint_names_the_patient():
    with pytest.raises(DataError, match="'P01' is in both the train and the test split"):
        assert_disjoint({"train": ["P00", "P01"], "val": [], "test": ["P01"]})


def test_split_file_is_reused_and_checked(tmp_path):
    path = tmp_path / "splits.json"
    first = load_or_make_splits(path, PATIENTS, seed=4)
    assert not path.exists()  # writing is the caller's last step
    write_splits(path, first)
    assert json.loads(path.read_text())["seed"] == 4
    edited = dict(first, train=sorted(first["train"])[::-1])  # a hand-edited but consistent file is kept as is
    write_splits(path, edited)
    assert load_or_make_splits(path, PATIENTS, seed=4) == edited
    with pytest.raises(DataError, match="no longer exist.*P09"):
        load_or_make_splits(path, PATIENTS[:9], seed=4)
    with pytest.raises(DataError, match="in no split"):
        load_or_make_splits(path, PATIENTS + ["P10"], seed=4)
    with pytest.raises(DataError, match="made with seed 4"):
        load_or_make_splits(path, PATIENTS, seed=5)
    with pytest.raises(DataError, match="made with fractions"):
        load_or_make_splits(path, PATIENTS, (0.8, 0.1, 0.1), seed=4)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a valid split file"):
        load_or_make_splits(path, PATIENTS, seed=4)
    with pytest.raises(DataError):
        write_splits(tmp_path / "bad.json", {"train": ["a"], "val": ["a"], "test": []})
    assert not (tmp_path / "bad.json").exists()


def _items(counts):
    return [f"p{i}" for i, n in enumerate(counts) for _ in range(n)]


def test_batch_sampler_mixes_patients_and_covers_all_items():
    patients = _items([30, 5, 12, 1, 9])
    sampler = PatientBatchSampler(patients, batch_size=8, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8
    assert sorted(i for b in batches for i in b) == list(range(len(patients)))
    assert {len(b) for b in batches} <= {7, 8}
    assert all(len({patients[i] for i in b}) >= 2 for b in batches)
    assert list(sampler) == batches  # same epoch -> same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert list(PatientBatchSampler(patients, 8, seed=0)) == batches


def test_batch_sampler_drop_last_and_edge_cases():
    patients = _items([10, 10, 3])
    sampler = PatientBatchSampler(patients, batch_size=5, seed=2, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4 and all(len(b) == 5 for b in batches)
    assert len({i for b in batches for i in b}) == 20
    assert all(len({patients[i] for i in b}) >= 2 for b in batches)
    three = PatientBatchSampler(_items([10, 10, 10]), batch_size=5, seed=2, min_patients=3)
    assert all(len({i // 10 for i in b}) == 3 for b in three)
    with pytest.raises(ValueError, match="4 batches with 3 patients each"):  # the 3-item patient cannot reach 4
        PatientBatchSampler(patients, batch_size=5, seed=2, drop_last=True, min_patients=3)
    single = PatientBatchSampler(["only"] * 5, batch_size=2, seed=0)  # one patient: nothing to mix
    assert sorted(i for b in single for i in b) == list(range(5))
    with pytest.raises(ValueError, match="largest patient: 9 items"):
        PatientBatchSampler(_items([9, 1]), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="cannot hold 2 patients"):
        PatientBatchSampler(_items([3, 3]), batch_size=1, seed=0)


def test_batch_sampler_drives_a_dataloader():
    patients = _items([6, 6, 6])
    data = TensorDataset(torch.arange(18))
    loader = DataLoader(data, batch_sampler=PatientBatchSampler(patients, batch_size=4, seed=0))
    seen = torch.cat([b[0] for b in loader]).tolist()
    assert sorted(seen) == list(range(18))


def test_partition_by_patient():
    ids = ["a", "b", "a", "c", "d", "b", "c", "a"]
    tr, val = partition_by_patient(ids, 0.5, seed=3)
    assert tr.dtype == torch.long and len(tr) and len(val)
    assert sorted(tr.tolist() + val.tolist()) == list(range(len(ids)))
    assert not {ids[i] for i in tr} & {ids[i] for i in val}
    assert len({ids[i] for i in val}) == 2
    again = partition_by_patient(ids, 0.5, generator=torch.Generator().manual_seed(3))
    assert [t.tolist() for t in again] == [tr.tolist(), val.tolist()]
    tr, val = partition_by_patient(["x", "y"], 0.9, seed=0)  # at least one patient on each side
    assert len(tr) == len(val) == 1
    with pytest.raises(ValueError, match="two or more patients"):
        partition_by_patient(["x", "x"])
    with pytest.raises(ValueError):
        partition_by_patient(ids, 1.0)


def test_sampler_batches_can_always_be_partitioned():
    patients = np.array(_items([40, 3, 25, 8, 17, 2]))
    sampler = PatientBatchSampler(patients, batch_size=6, seed=7)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in sampler:
            tr, val = partition_by_patient(patients[batch].tolist(), generator=generator)
            assert len(tr) and len(val)
