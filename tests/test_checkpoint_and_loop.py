"""Checkpoint round trips, EMA, cosine schedule and exact resume of the shared epoch loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.training.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
from benchmark.training.loop import EMA, Stage, TrainState, cosine_lr, resolve_device, run_stages


def test_nested_state_with_optimizer_round_trips(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "misc": [1, "a", {"x": torch.arange(3)}]}
    save_checkpoint(tmp_path / "c.safetensors", state, {"epoch": 4})
    loaded, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta == {"epoch": 4}
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert loaded["misc"][:2] == [1, "a"] and torch.equal(loaded["misc"][2]["x"], torch.arange(3))
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    fresh.load_state_dict(loaded["opt"])
    assert fresh.param_groups[0]["lr"] == 0.1
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_incomplete_checkpoint_names_the_file(tmp_path: Path):
    save_checkpoint(tmp_path / "c.safetensors", {"w": torch.zeros(1)})
    (tmp_path / "c.json").unlink()
    with pytest.raises(FileNotFoundError, match="c.safetensors"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_weights_file_round_trip_and_missing_module(tmp_path: Path):
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    save_weights(tmp_path / "m.safetensors", {"a": a}, {"note": "x"})
    load_weights(tmp_path / "m.safetensors", {"a": b})
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="no weights for module 'c'"):
        load_weights(tmp_path / "m.safetensors", {"c": torch.nn.Linear(2, 2)})


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


def _toy_training(work: Path, stop_after: int | None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def epoch(local, total):
        x = torch.randn(16, 4)  # drawn from the per-epoch seed
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    state = TrainState({"m": model}, {"m": opt})
    rows = run_stages([Stage("a", 2, epoch), Stage("b", 3, epoch)], state, work, seed=3,
                      device=torch.device("cpu"), stop_after_epochs=stop_after, progress=lambda s: None)
    return model, rows


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path):
    straight, rows = _toy_training(tmp_path / "one" / "work", None)
    _toy_training(tmp_path / "two" / "work", 3)  # interrupted after 3 of 5 epochs
    resumed, resumed_rows = _toy_training(tmp_path / "two" / "work", None)
    assert torch.equal(straight.weight, resumed.weight)
    assert [r["loss"] for r in rows] == [r["loss"] for r in resumed_rows]
    assert [r["stage"] for r in rows] == ["a", "a", "b", "b", "b"]
    assert (tmp_path / "two" / "train_log.csv").read_text().count("\n") == 6
