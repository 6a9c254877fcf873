"""nnU-Net (2D configuration), run through the real ``nnunetv2`` package (2.8.1, MIC-DKFZ/nnUNet @0e49508).

What runs (``methods/_nnunet_*.py``): every slice of the run's train and val stores becomes one 2D nnU-Net case
(channels ``_0000`` T1ce, ``_0001`` FLAIR; labels converted to nnU-Net's BraTS regions, as its Dataset137
conversion does) under the run folder (``<run>/nnunet/{raw,preprocessed,results}``, its environment set per
call, nothing global); our patient split is its ``splits_final.json`` (one fold). nnU-Net's fingerprint, default
planner and 2d preprocessing (crop to non-zero, z-score inside the mask) make its plans; its ``nnUNetTrainer``
trains the planned PlainConvUNet (SGD Nesterov 0.99, lr 1e-2, poly 0.9, weight decay 3e-5, deep supervision,
Dice + BCE on the regions, its augmentation, foreground oversampling, its planned batch size, AMP and
``torch.compile`` on CUDA); ``segment`` is its predictor (sliding window, Gaussian, mirroring) on each slice,
mapped back to our labels, so the framework scores it on the same per-patient test volumes as every row.

Why slices and not the raw cases: the test volumes every row is scored on are our stores' slices (cropped,
[0, 1]); nnU-Net trained on raw volumes would see another geometry and intensities. Why one case per slice and
not one pseudo-3D volume per patient: ``segment`` gets batches of slices without their patients, and nnU-Net's
z-score statistics must be computable at inference exactly as in training; per slice they are.

Contract mechanics: ``networks()`` runs nnU-Net's planner on a simulated fingerprint (``planning_shape``, the
median slice shape after cropping); ``stages`` plans the run's data and adopts the trainer's network; the plans
travel in the weights (``PlannedUNet``). One stage of ``epochs`` nnU-Net epochs; its optimiser and bookkeeping
are in the framework's checkpoint, so a run resumes exactly.

Declared deviations from running nnU-Net by hand:
- ``test_config`` shrinks the schedule (40 epochs x 10 iterations; iterations are also capped by
  ``training.max_batches_per_epoch``), the widths (16..128) and the fingerprint's intensity sample (1e5 voxels;
  only CT normalisation reads it), and turns compile off; the full size is nnU-Net's defaults.
- Its end-of-training validation on the val fold (``perform_actual_validation``) is not run: the framework
  scores the test split. ``progress.png`` is drawn once at the end, not every epoch.
- With one process its fingerprint and preprocessing run in a thread of the job instead of spawned pools; its
  augmentation runs in ``training.num_workers`` processes (0: in the job, deterministic).
- The framework's ``batch_size``, ``amp`` and ``grad_clip`` are not used: nnU-Net plans its batch, uses fp16 AMP
  on CUDA and clips at 12. ``regions: False`` trains the four labels with its Dice + CE instead of the regions.
- ``segment`` returns one-hot scores of nnU-Net's segmentation (region sigmoids have no per-class logits).
- The full-size parameter count is that of the plan for 192 x 192 slices (6 stages, 32..512, 3 region heads);
  a run's own plan depends on its data.
"""

from benchmark.methods import MultiChannelMethod
from benchmark.training.loop import Stage


class Method(MultiChannelMethod):
    kind = "multichannel"
    display_name = "nnU-Net (2D)"
    paper_name = "nnU-Net"
    datasets = ("brats",)
    hyperparameters = {
        "epochs": 1000,
        "iterations_per_epoch": 250,
        "val_iterations_per_epoch": 50,
        "initial_lr": 0.01,
        "weight_decay": 3e-05,
        "base_features": 32,
        "max_features": 512,
        "gpu_memory_gb": 8,
        "regions": True,
        "fingerprint_voxels": 100000000,
        "mirroring": True,
        "tile_step_size": 0.5,
        "compile": True,
        "planning_shape": [192, 192],
    }
    test_config = {
        "epochs": 40,
        "iterations_per_epoch": 10,
        "val_iterations_per_epoch": 2,
        "base_features": 16,
        "max_features": 128,
        "fingerprint_voxels": 100000,
        "compile": False,
        "planning_shape": [64, 64],
    }
    requires = {
        "nnunetv2": "nnunetv2>=2.8.1,<2.9",
        "dynamic_network_architectures": "dynamic-network-architectures>=0.4.4,<0.5",
    }
    reference = {
        "repository": "https://github.com/MIC-DKFZ/nnUNet",
        "commit": "0e49508",
        "parameters": 20621364,
        "notes": "nnunetv2 itself; its planner for 192 x 192 (or 192 x 160) slices, 4 labels; ours trains 3 regions "
                 "(3 heads, -997); for 256 x 256 slices it plans 7 stages, 33,475,128",
    }

    def build(self, in_channels: int, num_classes: int):
        from methods._nnunet_model import PlannedUNet, make_setup
        from methods._nnunet_prepare import label_map, simulated_plans

        if num_classes != 4:
            raise ValueError(f"nnU-Net's BraTS labels map onto 4 classes (background, NCR, ED, ET), not {num_classes}")
        modalities = (self.record.data.get("modalities") if self.record is not None else None) or ["t1ce", "flair"]
        if len(modalities) != in_channels:
            raise ValueError(f"{in_channels} input channels but modalities {modalities}")
        h = self.hparams
        plans, dataset_json = simulated_plans(h["planning_shape"], modalities, h)
        return PlannedUNet(make_setup(plans, dataset_json, label_map(h["regions"])))

    def segment(self, nets, images):
        h = self.hparams
        return nets["segmenter"].predict(images, mirroring=h["mirroring"], tile_step_size=h["tile_step_size"])

    def stages(self, ctx, nets):
        from methods._nnunet_trainer import NnUNetTraining

        self._training = NnUNetTraining(ctx, self.hparams, nets["segmenter"])
        return [Stage("nnunet", self.hparams["epochs"], self._training.epoch)]

    def finish(self, ctx, nets):
        self._training.finish()
