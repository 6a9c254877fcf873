"""nnU-Net's trainer driven one epoch per framework epoch, with its state in the framework's checkpoint.

``NnUNetTraining`` prepares the run's nnU-Net dataset (``_nnunet_prepare``), builds ``nnUNetTrainerBenchmark``
(nnU-Net's ``nnUNetTrainer`` with the run's epochs, iterations, learning rate and weight decay), hands its
network to the framework's ``PlannedUNet`` and its SGD optimiser and bookkeeping to the framework's checkpoint,
and runs each epoch through the trainer's own hooks in the order of its ``run_training``: epoch start, training
steps, validation steps, epoch end (its logging, ``checkpoint_best.pth``). ``finish`` is its ``on_train_end``
(``checkpoint_final.pth``) and draws ``progress.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from nnunetv2.training.logging.nnunet_logger import MetaLogger
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from benchmark.training.loop import seed_everything
from methods._nnunet_model import PlannedUNet, make_setup
from methods._nnunet_prepare import CONFIGURATION, environment, label_map, prepare


class ProgressOnRequestLogger(MetaLogger):
    """nnU-Net's logger, drawing ``progress.png`` only when ``draw`` is set: the 3000 x 5400 px figure costs
    about 1.5 CPU-seconds a draw, more than a whole epoch at the default scale, so it is drawn once at the end."""

    draw = False

    def plot_progress_png(self, output_folder: str) -> None:
        if self.draw:
            with matplotlib.rc_context():  # seaborn's style must not leak into the process's other figures
                super().plot_progress_png(output_folder)


class nnUNetTrainerBenchmark(nnUNetTrainer):
    """nnUNetTrainer; the run's settings are set on the instance before ``initialize`` (see ``NnUNetTraining``)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.logger = ProgressOnRequestLogger(self.output_folder, False)


def _plain(value: Any) -> Any:
    """Logged values as JSON numbers (the framework's checkpoint keeps non-tensors as JSON)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, np.integer, float, int)):
        return float(value)
    return value


class TrainerState:
    """The trainer's bookkeeping for the framework's checkpoint (``ctx.track``): epoch, logs, best EMA pseudo
    Dice, AMP grad scaler. With the network and optimiser there, a resumed run follows the uninterrupted one."""

    def __init__(self, trainer: nnUNetTrainer):
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        t = self.trainer
        logs = t.logger.get_checkpoint()
        return {"current_epoch": int(t.current_epoch),
                "best_ema": None if t._best_ema is None else float(t._best_ema),
                "logging": {key: _plain(values) for key, values in logs.items()},
                "grad_scaler": t.grad_scaler.state_dict() if t.grad_scaler is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = self.trainer
        t.current_epoch = int(state["current_epoch"])
        t._best_ema = state["best_ema"]
        t.logger.load_checkpoint({key: list(values) for key, values in state["logging"].items()})
        if t.grad_scaler is not None and state["grad_scaler"]:
            t.grad_scaler.load_state_dict(state["grad_scaler"])


class NnUNetTraining:
    """One run's nnU-Net training (see the module doc); ``epoch`` is the run's single stage."""

    def __init__(self, ctx, h: dict[str, Any], model: PlannedUNet):
        self.ctx, self.h, self.model = ctx, h, model
        self.root = Path(ctx.out_dir) / "nnunet"
        self.workers = int(ctx.training.num_workers)
        processes = max(1, self.workers)
        with self._environment(augmentation_processes=processes):  # its planner sets torch threads to this
            plans, dataset_json = prepare(Path(ctx.store_dir), self.root, h, processes)
        with self._environment():
            plans["continue_training"] = False  # read (and removed) by the trainer's constructor
            trainer = nnUNetTrainerBenchmark(plans, CONFIGURATION, 0, dataset_json, device=ctx.device)
            trainer.num_epochs = int(h["epochs"])
            trainer.num_iterations_per_epoch = self._capped(h["iterations_per_epoch"])
            trainer.num_val_iterations_per_epoch = self._capped(h["val_iterations_per_epoch"])
            trainer.initial_lr = float(h["initial_lr"])
            trainer.weight_decay = float(h["weight_decay"])
            trainer.initialize()
            seed_everything(ctx.seed)  # the loaders' first batches, drawn by on_train_start, are seeded
            trainer.on_train_start()
            network = getattr(trainer.network, "_orig_mod", trainer.network)  # torch.compile keeps the module there
            model.adopt(make_setup(trainer.plans_manager.plans, dataset_json, label_map(h["regions"]),
                                   trainer.inference_allowed_mirroring_axes), network)
        self.trainer = trainer
        ctx.track(trainer.optimizer, "segmenter")
        ctx.track(TrainerState(trainer), "nnunet_trainer")

    def _environment(self, augmentation_processes: int | None = None):
        if augmentation_processes is None:
            augmentation_processes = self.workers
        return environment(self.root, processes=max(1, self.workers), augmentation_processes=augmentation_processes,
                           compile_network=bool(self.h["compile"]))

    def _capped(self, iterations: int) -> int:
        cap = self.ctx.training.max_batches_per_epoch
        return int(iterations) if cap is None else min(int(iterations), int(cap))

    def epoch(self, local: int, total: int) -> dict[str, float]:
        t = self.trainer
        if t.current_epoch != local:
            raise RuntimeError(f"nnU-Net's trainer is at epoch {t.current_epoch} but the framework runs epoch {local}: "
                               "its state (TrainerState) was not restored with the checkpoint")
        with self._environment():
            t.on_epoch_start()
            t.on_train_epoch_start()
            train = [t.train_step(next(t.dataloader_train)) for _ in range(t.num_iterations_per_epoch)]
            t.on_train_epoch_end(train)
            with torch.no_grad():
                t.on_validation_epoch_start()
                val = [t.validation_step(next(t.dataloader_val)) for _ in range(t.num_val_iterations_per_epoch)]
                t.on_validation_epoch_end(val)
            t.on_epoch_end()
        value = t.logger.get_value
        return {"loss": float(value("train_losses", local)), "val_loss": float(value("val_losses", local)),
                "pseudo_dice": float(value("mean_fg_dice", local)), "lr": float(value("lrs", local))}

    def finish(self) -> None:
        t = self.trainer
        with self._environment():
            t.on_train_end()
            t.logger.draw = True
            t.logger.plot_progress_png(t.output_folder)
        t.set_deep_supervision_enabled(False)
        self.model.network.eval()
