"""Checkpoints (one file, replaced as a unit), EMA, cosine schedule and resuming of the shared epoch loop: after an
interruption at any write, and only under the run's own fingerprint."""

from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from benchmark.record import RecordError
from benchmark.training.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, save_weights
from benchmark.training.loop import EMA, Stage, TrainState, clip_and_step, cosine_lr, resolve_device, run_stages


def test_nested_state_with_optimizer_round_trips_in_one_file(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "misc": [1, "a", {"x": torch.arange(3)}]}
    save_checkpoint(tmp_path / "c.safetensors", state, {"epoch": 4, "zeta": 1, "alpha": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # tensors, skeleton and meta: one file
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert list(meta) == ["epoch", "zeta", "alpha"]  # key order kept (train_log.csv columns after a resume)
    # a serialisation round trip is exact by design (no arithmetic): equality is the right check here
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert loaded["misc"][:2] == [1, "a"] and torch.equal(loaded["misc"][2]["x"], torch.arange(3))
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    fresh.load_state_dict(loaded["opt"])
    assert fresh.param_groups[0]["lr"] == 0.1
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_unreadable_or_foreign_checkpoint_names_the_file(tmp_path: Path):
    (tmp_path / "bytes.safetensors").write_bytes(b"not a checkpoint" * 4)
    with pytest.raises(CheckpointError, match="bytes.safetensors: unreadable"):
        load_checkpoint(tmp_path / "bytes.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "weights.safetensors"))  # e.g. a model file, or an old format
    with pytest.raises(CheckpointError, match="weights.safetensors: not a checkpoint of this suite's format"):
        load_checkpoint(tmp_path / "weights.safetensors")


def test_weights_file_round_trip_and_missing_module(tmp_path: Path):
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    save_weights(tmp_path / "m.safetensors", {"a": a}, {"note": "x"})
    load_weights(tmp_path / "m.safetensors", {"a": b})
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(RecordError, match="no weights for module 'c'"):
        load_weights(tmp_path / "m.safetensors", {"c": torch.nn.Linear(2, 2)})
    with pytest.raises(RecordError, match="weights of 'a' do not fit"):
        load_weights(tmp_path / "m.safetensors", {"a": torch.nn.Linear(3, 2)})


def test_ema_follows_the_paper_update():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)
    assert ema.shadow["weight"].item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)


def test_cosine_schedule_ends_at_min_factor():
    assert cosine_lr(1.0, 0, 10) == pytest.approx(1.0)
    assert cosine_lr(1.0, 9, 10) == pytest.approx(0.01)
    assert cosine_lr(1.0, 4, 10) < cosine_lr(1.0, 3, 10)


def test_cuda_request_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="cuda"):
        resolve_device("cuda")


def _toy_training(work: Path, stop_after: int | None = None, fingerprint: str = "toy", messages=None):
    """Two stages of SGD on a linear model; the epoch logs its keys in a non-alphabetical order."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def epoch(local, total):
        x = torch.randn(16, 4)  # drawn from the per-epoch seed
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"zeta": 1.0, "loss": loss.item()}

    state = TrainState({"m": model}, {"m": opt})
    rows = run_stages([Stage("a", 2, epoch), Stage("b", 3, epoch)], state, work, seed=3, device=torch.device("cpu"),
                      fingerprint=fingerprint, stop_after_epochs=stop_after,
                      progress=(messages.append if messages is not None else lambda s: None))
    return model, rows


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_same_run(model, rows, log: Path, reference, reference_rows, reference_log: Path) -> None:
    assert torch.allclose(model.weight, reference.weight, rtol=1e-5, atol=1e-7)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows], rel=1e-5)
    assert log.read_text().splitlines()[0] == reference_log.read_text().splitlines()[0]  # same columns, same order
    assert [r["stage"] for r in _csv(log)] == [r["stage"] for r in _csv(reference_log)]


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path):
    straight, rows = _toy_training(tmp_path / "one" / "work")
    _toy_training(tmp_path / "two" / "work", 3)  # interrupted after 3 of 5 epochs
    messages = []
    resumed, resumed_rows = _toy_training(tmp_path / "two" / "work", messages=messages)
    assert any("resuming" in m and "at epoch 3" in m for m in messages)
    _assert_same_run(resumed, resumed_rows, tmp_path / "two" / "train_log.csv", straight, rows,
                     tmp_path / "one" / "train_log.csv")
    assert [r["stage"] for r in rows] == ["a", "a", "b", "b", "b"]
    assert (tmp_path / "two" / "train_log.csv").read_text().splitlines()[0] == "epoch,stage,zeta,loss,seconds"


class Killed(BaseException):
    """Stands for the process dying at a write boundary."""


def test_a_kill_at_every_write_boundary_resumes_to_the_uninterrupted_result(tmp_path: Path, monkeypatch):
    """Issue 12, defect 2: a kill between the two files of a checkpoint resumed one epoch behind. Every file the loop
    writes is moved into place by one ``os.replace``: the run is killed just before and just after each of them."""
    real_replace = os.replace
    straight, rows = _toy_training(tmp_path / "straight" / "work")
    calls = itertools.count()
    monkeypatch.setattr(os, "replace", lambda src, dst: (next(calls), real_replace(src, dst)))
    _toy_training(tmp_path / "counted" / "work")
    n_writes = next(calls)
    assert n_writes >= 11  # the log before the first epoch, then the log and the checkpoint after each of 5

    for at, after in itertools.product(range(n_writes), (False, True)):
        work = tmp_path / f"kill{at}{'after' if after else 'before'}" / "work"
        counter = itertools.count()

        def replace(src, dst, at=at, after=after, counter=counter):
            k = next(counter)
            if k == at and not after:
                raise Killed
            real_replace(src, dst)
            if k == at:
                raise Killed

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            _toy_training(work)
        monkeypatch.setattr(os, "replace", real_replace)
        resumed, resumed_rows = _toy_training(work)
        _assert_same_run(resumed, resumed_rows, work.parent / "train_log.csv", straight, rows,
                         tmp_path / "straight" / "train_log.csv")
        assert [p.name for p in work.iterdir()] == ["last.safetensors"]  # no partial file left


def test_a_checkpoint_of_another_fingerprint_is_not_resumed(tmp_path: Path):
    """Issue 12, defect 1 at the loop: a finished or foreign checkpoint is discarded, and the run says so."""
    fresh, rows = _toy_training(tmp_path / "fresh" / "work", fingerprint="new")
    _toy_training(tmp_path / "run" / "work", fingerprint="old")  # finished under another configuration
    messages = []
    model, changed_rows = _toy_training(tmp_path / "run" / "work", fingerprint="new", messages=messages)
    assert any("not resuming" in m and "fingerprint old" in m and "starting fresh" in m for m in messages)
    assert len(changed_rows) == 5
    _assert_same_run(model, changed_rows, tmp_path / "run" / "train_log.csv", fresh, rows,
                     tmp_path / "fresh" / "train_log.csv")
    (tmp_path / "run" / "work" / "last.safetensors").write_bytes(b"damaged")
    messages.clear()
    _toy_training(tmp_path / "run" / "work", fingerprint="new", messages=messages)
    assert any("unreadable" in m and "starting fresh" in m for m in messages)


def test_a_non_finite_gradient_stops_the_run_naming_stage_and_epoch(tmp_path: Path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()

    def epoch(local, total):
        loss = model(torch.full((2, 4), float("nan"))).mean()
        clip_and_step(loss, opt, model.parameters(), grad_clip=None)
        return {"loss": loss.item()}

    with pytest.raises(FloatingPointError, match=r"stage 'b', epoch 1/2: non-finite gradient"):
        run_stages([Stage("a", 0, epoch), Stage("b", 2, epoch)], TrainState({"m": model}, {"m": opt}),
                   tmp_path / "work", seed=0, device=torch.device("cpu"), fingerprint="nan", progress=lambda s: None)
    assert torch.equal(model.weight, before)
    with pytest.raises(FloatingPointError, match="non-finite"):  # with clipping as well
        clip_and_step(model(torch.full((2, 4), float("inf"))).mean(), opt, model.parameters(), grad_clip=1.0)
