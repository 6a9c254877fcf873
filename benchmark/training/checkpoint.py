"""Checkpoints and model files in safetensors, each one file written atomically.

safetensors holds tensors only, while a resumable state also holds optimiser hyper-parameters, epoch counters,
the log and the run's fingerprint. ``flatten_state`` splits any nested dict/list structure into a flat tensor dict
and a JSON skeleton in which each tensor is replaced by a reference to its key; the skeleton and the meta travel in
the safetensors header of the same file. A checkpoint is therefore replaced as one unit: a kill at any point leaves
either the previous checkpoint or the new one, never the tensors of one with the counters of the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import write_atomic, write_text_atomic
from ..record import RecordError

_REF = "__tensor__"
FORMAT = "fuse4seg-checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or was not written by ``save_checkpoint`` (the message names the file)."""


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``state`` into ``(tensors, skeleton)``; ``unflatten_state`` inverts it."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            tensors[key] = node.detach().cpu().contiguous()
            return {_REF: key}
        if isinstance(node, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(node)]
        return node

    return tensors, walk(state, prefix or "state")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    if isinstance(skeleton, dict) and _REF in skeleton:
        return tensors[skeleton[_REF]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten_state(tensors, v) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten_state(tensors, v) for v in skeleton]
    return skeleton


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_checkpoint(path: Path, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Save ``state`` (nested, with tensors) and ``meta`` (JSON; its key order is kept) to one file ``path``."""
    tensors, skeleton = flatten_state(state)
    header = {"format": FORMAT, "skeleton": json.dumps(skeleton), "meta": json.dumps(meta or {}, default=str)}
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def _read(path: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable safetensors file ({err})") from err


def load_checkpoint(path: Path, map_location: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(state, meta)`` saved by ``save_checkpoint``; ``CheckpointError`` names a file that is not one."""
    path = Path(path)
    tensors, header = _read(path, map_location)
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this suite's format {FORMAT} "
                              f"(found {header.get('format', 'none')})")
    try:
        return unflatten_state(tensors, json.loads(header["skeleton"])), json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint header ({err})") from err


def save_weights(path: Path, modules: dict[str, torch.nn.Module], meta: dict[str, Any]) -> None:
    """Final weights of a run: one safetensors file, keys ``<module>.<param>``, ``meta`` as JSON in its header."""
    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, module in modules.items()
        for k, v in module.state_dict().items()
    }
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(meta)}))


def weights_meta(path: Path) -> dict[str, Any]:
    """The ``meta`` that ``save_weights`` stored in a model file (e.g. its ``fingerprint``)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no weights file (was the run trained?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: unreadable weights file ({err})") from err


def model_fingerprint(path: Path) -> str:
    """The fingerprint of the run that wrote the model file ``path``."""
    meta = weights_meta(path)
    if "fingerprint" not in meta:
        raise RecordError(f"{path}: carries no fingerprint (written by an older version); retrain the run")
    return meta["fingerprint"]


def load_weights(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no weights file (was the run trained?)")
    try:
        tensors, _ = _read(path, "cpu")
    except CheckpointError as err:
        raise RecordError(str(err)) from err
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sub and any(True for _ in module.state_dict()):
            raise RecordError(f"{path}: holds no weights for module {name!r}")
        try:
            module.load_state_dict(sub)
        except RuntimeError as err:
            raise RecordError(f"{path}: the weights of {name!r} do not fit the network its record builds "
                              f"({str(err).splitlines()[0]})") from err
