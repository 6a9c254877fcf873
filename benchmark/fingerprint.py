"""Fingerprints of what determines a result: settings, code and raw data, as short digests.

A trained model's fingerprint joins its resolved record (``config.json``), the content digests of the stores it
trained on and the version of the code that trained it; checkpoints, model files and fused stores carry it, so that
a checkpoint is resumed only by the run that wrote it and a fused store is known to come from the model beside it.
The workflow uses the same code versions and raw-data manifests as rule parameters, so that Snakemake re-runs
exactly the jobs whose code or raw data changed. Kept free of torch: the workflow's plan calls it.

Code versions hash syntax trees without docstrings, so editing a comment, a docstring or the layout of a file
retrains nothing, while any change of what the code does retrains the runs that use it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# the framework's code that trains every run (recipes, networks, losses, batches, the method base classes)
FRAMEWORK_CODE = ("benchmark/training/*.py", "benchmark/nn/*.py", "benchmark/methods.py", "benchmark/data/store.py",
                  "benchmark/data/splits.py")


def digest(value: Any) -> str:
    """Short SHA-256 digest (16 hex digits) of a JSON-able value, independent of dict order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@lru_cache(maxsize=None)
def _source_digest(path: Path, mtime_ns: int, size: int) -> str:
    """Digest of a Python file's syntax tree without docstrings (cached per file version)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError:  # an unparsable file still has a version: its bytes
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    dumped = ast.dump(_strip_docstrings(tree), annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dumped.encode("utf-8")).hexdigest()[:16]


def source_digest(path: Path | str) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    return _source_digest(path, stat.st_mtime_ns, stat.st_size)


def _private_imports(path: Path) -> set[Path]:
    """The ``_``-prefixed modules of ``path``'s folder that ``path`` imports (``from methods._x import ...``,
    ``from ._x import ...``, ``import methods._x``)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update((node.module or "").split("."))
            if node.module in (None, "methods") or node.level:
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names.update(alias.name.split("."))
    return {path.parent / f"{n}.py" for n in names if n.startswith("_") and (path.parent / f"{n}.py").is_file()}


def method_sources(method_file: Path | str) -> list[Path]:
    """A method's code: its file, its private helpers ``_<name>_*.py`` and the private modules of its folder that
    these import (followed transitively)."""
    method_file = Path(method_file).resolve()
    todo = [method_file, *method_file.parent.glob(f"_{method_file.stem}_*.py")]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(_private_imports(path) - seen)
    return sorted(seen)


def code_version(method_file: Path | str | None = None) -> str:
    """Version of the code that trains a run: the framework's training code, plus the method's code (its file
    ``method_file``; None for the shared follower of a disjoint pipeline)."""
    files = sorted(p for pattern in FRAMEWORK_CODE for p in REPO.glob(pattern))
    files += method_sources(method_file) if method_file is not None else []
    return digest({_shown(p): source_digest(p) for p in files})


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def raw_manifest(root: Path | str) -> list[tuple[str, int, int]]:
    """Every file below ``root`` as (relative path, size, modification time in ns), sorted; hidden files and
    folders (a leading ".") are left out."""
    root = Path(root)
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                stat = os.stat(os.path.join(folder, name))
                entries.append((os.path.relpath(os.path.join(folder, name), root), stat.st_size, stat.st_mtime_ns))
    return sorted(entries)
