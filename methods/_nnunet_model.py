"""The network nnU-Net plans, kept with its plans so that ``model.safetensors`` alone rebuilds and runs it.

The framework builds a method's networks before its recipe runs, but nnU-Net's network depends on plans made
from the run's data. ``PlannedUNet`` therefore holds a *setup* (plans, dataset.json, configuration, mirror axes)
as a uint8 buffer of its JSON: built first from a simulated plan, it adopts the trainer's network once the run's
data is planned, and ``load_state_dict`` rebuilds the network whenever the stored setup differs from its own.
``predict`` is nnU-Net's own inference on each slice as one 2D case (its cropping, z-scoring, sliding window
with Gaussian weighting and mirroring, regions -> labels), mapped back to our label order.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import numpy as np
import torch
from torch import nn

from methods._nnunet_prepare import CONFIGURATION, SPACING_2D

# nnU-Net mirrors both in-plane axes of every 2D configuration (trainer: configure_rotation_dummyDA_mirroring...).
MIRROR_AXES_2D = [0, 1]


def encode(setup: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(list(json.dumps(setup, sort_keys=True).encode("utf-8")), dtype=torch.uint8)


def decode(buffer: torch.Tensor) -> dict[str, Any]:
    return json.loads(bytes(buffer.detach().cpu().numpy().tobytes()).decode("utf-8"))


def managers(setup: dict[str, Any]):
    """nnU-Net's (plans manager, configuration manager, label manager) of a setup."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(setup["plans"])
    return plans, plans.get_configuration(setup["configuration"]), plans.get_label_manager(setup["dataset_json"])


def build_network(setup: dict[str, Any]) -> nn.Module:
    """The configuration's network as nnU-Net's default trainer builds it (``get_network_from_plans``)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    plans, configuration, labels = managers(setup)
    return get_network_from_plans(
        configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import,
        determine_num_input_channels(plans, configuration, setup["dataset_json"]),
        labels.num_segmentation_heads, allow_init=True, deep_supervision=False)


def make_setup(plans: dict, dataset_json: dict, label_map: np.ndarray,
               mirror_axes: list[int] | tuple[int, ...] = MIRROR_AXES_2D) -> dict[str, Any]:
    return {"plans": plans, "dataset_json": dataset_json, "configuration": CONFIGURATION,
            "mirror_axes": [int(a) for a in mirror_axes], "label_map": [int(v) for v in label_map]}


@contextlib.contextmanager
def deep_supervision(network: nn.Module, enabled: bool):
    decoder = network.decoder
    before = decoder.deep_supervision
    decoder.deep_supervision = enabled
    try:
        yield
    finally:
        decoder.deep_supervision = before


class PlannedUNet(nn.Module):
    """nnU-Net's planned network plus its setup (see the module doc); ``forward`` is the bare network."""

    def __init__(self, setup: dict[str, Any]):
        super().__init__()
        self.register_buffer("setup_json", encode(setup))
        self.network = build_network(setup)

    @property
    def setup(self) -> dict[str, Any]:
        return decode(self.setup_json)

    def adopt(self, setup: dict[str, Any], network: nn.Module) -> None:
        """Take ``network`` (e.g. the trainer's, parameters shared) as the network of ``setup``."""
        self.setup_json = encode(setup).to(self.setup_json.device)
        self.network = network

    def _aliases(self) -> dict[str, str]:
        """State-dict key -> the first key naming the same tensor. dynamic_network_architectures registers each
        conv and norm twice (``conv`` and ``all_modules.0``) and the decoder holds the encoder; safetensors
        stores every tensor once, so the state dict carries first names only."""
        first: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for key, value in super().state_dict(keep_vars=True).items():
            if id(value) in first:
                aliases[key] = first[id(value)]
            else:
                first[id(value)] = key
        return aliases

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for alias in self._aliases():
            del state[prefix + alias]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        stored = state_dict.get("setup_json")
        if stored is not None and not torch.equal(stored.cpu(), self.setup_json.cpu()):
            setup = decode(stored)
            self.adopt(setup, build_network(setup).to(self.setup_json.device))
        state = dict(state_dict)
        for alias, key in self._aliases().items():
            if key in state:
                state.setdefault(alias, state[key])
        return super().load_state_dict(state, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor):
        return self.network(x)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, *, mirroring: bool, tile_step_size: float) -> torch.Tensor:
        """(B, C, H, W) slices -> one-hot scores (B, 4, H, W) of nnU-Net's segmentation, in our label order.

        With regions there are no per-class logits (nnU-Net thresholds three sigmoids in its
        ``regions_class_order``), so the scores are the one-hot of its exported label map in both modes.
        """
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        setup = self.setup
        plans, configuration, _ = managers(setup)
        device = images.device
        benchmark = torch.backends.cudnn.benchmark  # its constructor switches cuDNN autotuning on for the process
        with contextlib.redirect_stdout(io.StringIO()):  # and says on CPU that it works on the CPU
            predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=mirroring,
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        verbose=False, allow_tqdm=False)
        torch.backends.cudnn.benchmark = benchmark
        predictor.manual_initialization(self.network, plans, configuration, [self.network.state_dict()],
                                        setup["dataset_json"], "nnUNetTrainer", tuple(setup["mirror_axes"]))
        to_ours = np.asarray(setup["label_map"], dtype=np.int64)
        labels = []
        was_training = self.network.training
        with deep_supervision(self.network, False):
            for image in images.detach().float().cpu().numpy():
                segmentation = predictor.predict_single_npy_array(image[:, None], {"spacing": list(SPACING_2D)})
                labels.append(to_ours[np.asarray(segmentation)[0]])
        self.network.train(was_training)
        one_hot = nn.functional.one_hot(torch.from_numpy(np.stack(labels)), len(to_ours))
        return one_hot.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32)
