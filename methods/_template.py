"""Template of a method plugin: copy to ``methods/<name>.py`` and fill in (this file is never discovered).

The file name is the method's name in paths, configs and the command line. The workflow reads the class
attributes below WITHOUT importing the file (``ast.literal_eval``), so they must be plain literals:

- ``kind``: ``"fusion"`` | ``"multichannel"`` | ``"joint"`` - decides the engine (see
  ``benchmark/training/engines.py``) and the group of the method's row in Table 1.
- ``display_name``: row label in our tables; ``paper_name``: the row of the paper's tables that this
  method reproduces (``None`` for methods the paper does not report).
- ``datasets``: dataset kinds it runs on, ``"brats"`` and/or ``"paired"`` (multi-channel methods run on
  BraTS only).
- ``hyperparameters``: every setting with its default (full-size, as the method's paper);
  ``test_config``: overrides that make it tiny, used by the contract tests and by configs with
  ``method_scale: test`` (the synthetic default run).
- joint methods only: ``ablations`` (variant key -> ``{"label", "order", "overrides"}``) and ``full_label``.

Adding the file is all it takes: ``snakemake -n`` shows its jobs and the tables get its rows. A method whose
file fails to import fails its own jobs only (run with ``--keep-going``); ``python -m benchmark methods``
lists what was found and why anything was skipped. The contract tests (``tests/test_method_contract.py``)
run over every discovered method: build, one training step, output shape and range, determinism.
"""

import torch

from benchmark.methods import FusionMethod


class TwoLayerFusion(torch.nn.Module):
    """``forward(a, b)``: two (B, 1, H, W) sources in [0, 1] -> fused (B, 1, H, W) in [0, 1]."""

    def __init__(self, width: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(2, width, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(width, 1, 3, padding=1),
            torch.nn.Sigmoid(),
        )

    def forward(self, a, b):
        return self.net(torch.cat([a, b], dim=1))


class Method(FusionMethod):
    kind = "fusion"
    display_name = "My Fusion"
    paper_name = None
    datasets = ("brats", "paired")
    hyperparameters = {"width": 32}
    test_config = {"width": 4}
    trainable = True

    def build(self):
        return TwoLayerFusion(self.hparams["width"])

    def fusion_loss(self, model, a, b):
        fused = model(a, b)
        loss = torch.nn.functional.l1_loss(fused, torch.maximum(a, b))
        return loss, {"intensity": loss.item()}
