"""Template of a method plugin: copy to ``methods/<name>.py`` and fill in (this file is never discovered).

The file name is the method's name in paths, configs and the command line. The workflow reads the class
attributes below WITHOUT importing the file (``ast.literal_eval``), so they must be plain literals:

- ``kind``: ``"fusion"`` (two sources -> one fused image; on BraTS the shared follower segments it),
  ``"multichannel"`` (segments the stacked sources) or ``"joint"`` (fusion trained through segmentation);
- ``display_name``: row label in our tables; ``paper_name``: the paper's row it reproduces (or ``None``);
- ``datasets``: ``"brats"`` and/or ``"paired"``;
- ``hyperparameters``: every setting of the method, full size, as its paper or code has it; ``test_config``:
  overrides that make it tiny (contract tests, and configs with ``method_scale: test`` such as the default run);
- ``training``: the method's defaults for keys of the config's ``training`` section (a run resolves, lowest
  first: schema default, this, the config's ``training``, ``datasets.<d>.training``, ``method_training.<name>``);
- ``requires``: importable module -> pip requirement; if one is missing the method's jobs are skipped with the
  reason; ``accelerators``: optional modules it uses when present (e.g. CUDA kernels with a PyTorch fallback);
- ``weights``: name -> description of a local weight file it can start from (config ``weights.<name>.<key>``,
  read by ``self.weight_file(key)``; never downloaded); without one it trains from scratch and its row says so;
- ``reference``: the official code it follows (repository, commit) and its parameter count at full size, printed
  beside ours by ``python -m benchmark methods --params``.

Hooks (all optional but ``build``): ``stages(ctx, nets)`` is the recipe, a list of ``Stage(name, epochs,
run_epoch)``; each epoch is checkpointed, logged to ``train_log.csv`` and resumable. ``ctx`` gives the data
(``ctx.loader(key)``: seeded batches; ``ctx.sources(batch)``), the device, ``ctx.autocast()``, ``ctx.step(loss,
optimizer, module)`` and ``ctx.track(optimizer, name)`` (checkpointed). ``fuse(nets, a, b)`` runs once per slice
into a fused store; ``segment(nets, images)`` scores the stacked sources. The contract tests
(``tests/test_method_contract.py``) train and evaluate every method file end to end with no edit.
"""

import torch
import torch.nn.functional as F

from benchmark.methods import FusionMethod, MultiChannelMethod
from benchmark.training.loop import Stage, set_lr
from benchmark.training.stages import RunningMean, segmentation_stage


class AutoencoderFusion(torch.nn.Module):
    """``forward(a, b)``: two (B, 1, H, W) sources in [0, 1] -> fused (B, 1, H, W) in [0, 1]."""

    def __init__(self, width: int):
        super().__init__()
        self.encoder = torch.nn.Conv2d(1, width, 3, padding=1)
        self.decoder = torch.nn.Sequential(torch.nn.Conv2d(width, 1, 3, padding=1), torch.nn.Sigmoid())

    def reconstruct(self, x):
        return self.decoder(torch.relu(self.encoder(x)))

    def forward(self, a, b):
        return self.decoder(torch.maximum(torch.relu(self.encoder(a)), torch.relu(self.encoder(b))))


class Method(FusionMethod):
    """A fusion method with its own two-phase recipe: reconstruction, then fusion; Adam with a step decay."""

    kind = "fusion"
    display_name = "My Fusion"
    paper_name = None
    datasets = ("brats", "paired")
    hyperparameters = {"width": 32, "reconstruction_epochs": 40, "fusion_epochs": 80, "lr": 1e-4,
                       "step_size": 20, "gamma": 0.5}
    test_config = {"width": 4, "reconstruction_epochs": 1, "fusion_epochs": 1}
    training = {"grad_clip": 0.01}
    reference = {"repository": "https://github.com/<owner>/<repo>", "commit": "<sha>", "parameters": None}

    def build(self):
        return AutoencoderFusion(self.hparams["width"])

    def stages(self, ctx, nets):
        model, h = nets["fusion"], self.hparams
        optimizer = ctx.track(torch.optim.Adam(model.parameters(), lr=h["lr"]), "fusion")

        def phase(name, epochs, first_epoch, loss_of):
            def run_epoch(local, total):
                epoch = first_epoch + local  # one step schedule over both phases
                set_lr(optimizer, h["lr"] * h["gamma"] ** (epoch // h["step_size"]))
                model.train()
                mean = RunningMean()
                for step, batch in enumerate(ctx.loader(epoch)):
                    a, b = ctx.sources(batch)
                    with ctx.autocast():
                        loss = loss_of(a, b)
                    ctx.step(loss, optimizer, model)  # clips at the run's grad_clip (0.01 by default here)
                    mean.add({"loss": loss.item()})
                return {**mean.result(), "lr": optimizer.param_groups[0]["lr"]}

            return Stage(name, epochs, run_epoch)

        def reconstruction(a, b):
            return F.mse_loss(model.reconstruct(a), a) + F.mse_loss(model.reconstruct(b), b)

        def fusion(a, b):
            return F.l1_loss(model(a, b), torch.maximum(a, b))

        return [phase("reconstruction", h["reconstruction_epochs"], 0, reconstruction),
                phase("fusion", h["fusion_epochs"], h["reconstruction_epochs"], fusion)]


class TinyUNet(torch.nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int):
        super().__init__()
        self.down = torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(width + in_channels, num_classes, 1)

    def forward(self, x):
        return self.head(torch.cat([self.down(x), x], dim=1))


class SegmentationMethodExample(MultiChannelMethod):
    """A multi-channel segmentation method with its own optimiser (copy it as ``Method`` into its own file).

    Its recipe is the default one (``warmup_epochs + bilevel_epochs`` epochs of CE + weighted Dice over the
    stacked sources) with SGD and a poly schedule in place of AdamW and the cosine; a method that needs more
    (deep supervision, its own loss) writes ``stages`` as the fusion example above does.
    """

    kind = "multichannel"
    display_name = "My Segmenter"
    paper_name = None
    datasets = ("brats",)
    hyperparameters = {"width": 32, "lr": 1e-2, "momentum": 0.9, "weight_decay": 1e-4, "epochs": 150}
    test_config = {"width": 4, "epochs": 2}

    def build(self, in_channels, num_classes):
        return TinyUNet(in_channels, num_classes, self.hparams["width"])

    def stages(self, ctx, nets):
        model, h = nets["segmenter"], self.hparams
        optimizer = ctx.track(torch.optim.SGD(model.parameters(), lr=h["lr"], momentum=h["momentum"],
                                              weight_decay=h["weight_decay"]), "segmenter")
        return [segmentation_stage(ctx, "segmentation", model, model, optimizer,
                                   lambda batch: batch["images"].to(ctx.device), h["epochs"],
                                   lambda epoch, epochs: h["lr"] * (1 - epoch / epochs) ** 0.9)]
