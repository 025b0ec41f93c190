"""Markers follow the folder: tests/unit are unit, tests/integration integration, tests/services
services. `make test-fast` (pytest -m unit) runs only what needs nothing but pytest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

_BY_DIR = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "services": pytest.mark.services}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in _BY_DIR and not any(item.iter_markers(name=kind)):
            item.add_marker(_BY_DIR[kind])
        if item.get_closest_marker("gpu"):
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
