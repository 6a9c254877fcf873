"""Shared fixtures: paths to the repository and to the optional real sample data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_CONFIG = REPO / "workflows" / "config" / "default.yaml"
SCHEMA = REPO / "workflows" / "schema" / "config.schema.yaml"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (see the README's 'Data' section)")
    return SHARED_DATA
