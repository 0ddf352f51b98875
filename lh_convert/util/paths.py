"""Where lh-convert keeps what it can rebuild: fetched model files, token caches, random-init
models and built evaluation data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CACHE_VARIABLE = "LH_CONVERT_CACHE"


def cache_dir() -> Path:
    """``$LH_CONVERT_CACHE`` or ``~/.cache/lh-convert``."""
    return Path(os.environ.get(CACHE_VARIABLE, Path.home() / ".cache" / "lh-convert"))


def shipped_folder(folder: str) -> Path:
    """A folder of the repository that ships with the package (``recipes``, ``evals``,
    ``docs/conversion``): installed as the package data ``lh_convert._<last part>``, or, run
    from a checkout that is not installed (``PYTHONPATH=.``), the checkout's own folder."""
    try:
        spec = importlib.util.find_spec(f"lh_convert._{Path(folder).name}")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[2] / folder
