"""Atomic file writes: a reader (Snakemake, the report, a person) never sees half a file.

Every writer of the suite writes to a unique temporary name beside the target (same file system, so the
final ``os.replace`` is atomic) and removes it on failure.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def partial_path(path: Path | str) -> Path:
    """Unique temporary name beside ``path``; it keeps the real suffixes (".nii.gz", ".png") for writers
    that infer the format from the name."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{''.join(path.suffixes)}")


def write_atomic(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)``, then move the file into place; nothing is left behind on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
