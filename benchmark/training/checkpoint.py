"""Checkpoints in safetensors plus a JSON sidecar, written atomically.

safetensors holds tensors only, while a resumable state also holds optimiser hyper-parameters, epoch
counters and metrics. ``flatten_state`` splits any nested dict/list structure into a flat tensor dict
(safetensors) and a JSON skeleton in which each tensor is replaced by a reference to its key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..atomic import write_atomic

_REF = "__tensor__"


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
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")

    write_atomic(path, write)


def save_checkpoint(path: Path, state: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Save ``state`` (nested, with tensors) to ``path`` (.safetensors) and ``path.json`` (skeleton + meta)."""
    path = Path(path)
    tensors, skeleton = flatten_state(state)
    write_atomic(path, lambda tmp: save_file(tensors, tmp))
    write_json(path.with_suffix(".json"), {"meta": meta or {}, "skeleton": skeleton})


def load_checkpoint(path: Path, map_location: str = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(state, meta)`` saved by ``save_checkpoint``; errors name the file at fault."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise FileNotFoundError(f"{path}: checkpoint incomplete (needs {path.name} and {sidecar.name})")
    try:
        tensors = load_file(str(path), device=map_location)
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint: {err}") from err
    return unflatten_state(tensors, doc["skeleton"]), doc.get("meta", {})


def save_weights(path: Path, modules: dict[str, torch.nn.Module], meta: dict[str, Any]) -> None:
    """Final weights of a run: one safetensors file, keys ``<module>.<param>``, meta as strings."""
    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous()
        for name, module in modules.items()
        for k, v in module.state_dict().items()
    }
    write_atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"meta": json.dumps(meta)}))


def load_weights(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file (was the run trained?)")
    tensors = load_file(str(path))
    for name, module in modules.items():
        prefix = f"{name}."
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sub and any(True for _ in module.state_dict()):
            raise ValueError(f"{path}: holds no weights for module {name!r}")
        module.load_state_dict(sub)
