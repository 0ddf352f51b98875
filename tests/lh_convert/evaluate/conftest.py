"""Fixtures of the evaluation tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _private_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The token cache and the datasets cache in fresh folders: nothing found by accident."""
    root = tmp_path_factory.mktemp("caches")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LH_CONVERT_CACHE", str(root / "lh-convert"))
        patch.setenv("HF_DATASETS_CACHE", str(root / "datasets"))
        yield
