"""Shared fixtures of the experiments' tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parents[2] / "experiments" / "replication" / "replicate.py"


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """experiments/replication/replicate.py, loaded fresh, with its .rep (`REP`) and the
    folder `save` keeps it in (`KEEP`) under `tmp_path`."""
    spec = importlib.util.spec_from_file_location("replication_driver", DRIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "REP", tmp_path / ".rep")
    monkeypatch.setattr(module, "KEEP", tmp_path / "keep")
    return module
