"""The one door for every transformers load: configs, tokenizers and models.

A model or tokenizer folder may ship its own Python (``auto_map`` in ``config.json`` or
``tokenizer_config.json``), which transformers runs when asked to trust it. lh-convert never
does: every load passes ``trust_remote_code=False``, and a folder that names custom code is
refused first, in one line, so transformers never gets to ask "run the custom code? [y/N]".
At the default verbosity (and ``-q``) loads also run with transformers' logging at error
level, so its multi-line load report (missing or unexpected keys) does not print above the
one-line error that reports the same; from ``-v`` on, transformers' level and progress bars
stay as ``util.verbosity`` set them, report included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import verbosity
from .errors import LhConvertError

CUSTOM_CODE_FILES = ("config.json", "tokenizer_config.json")


def refuse_custom_code(folder: Path) -> None:
    """Raise if ``folder``'s config or tokenizer config names custom code (``auto_map``)."""
    for name in CUSTOM_CODE_FILES:
        file = Path(folder) / name
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # missing or unreadable: the load itself reports that
        if isinstance(raw, dict) and raw.get("auto_map"):
            named = raw["auto_map"]
            classes = ", ".join(sorted(named)) if isinstance(named, dict) else ""
            raise LhConvertError(
                f"{file} has auto_map ({classes or 'custom classes'}): the folder ships its own "
                f"Python code, which lh-convert never runs; use a model of a built-in "
                f"transformers architecture (no auto_map)")


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Below ``-v``: transformers' logging at error level and no "Loading weights" bar for the
    block, its load report being ours to give, in one line. From ``-v`` on: nothing changed."""
    if verbosity.level() >= 1:
        yield
        return
    from transformers.utils import logging

    before, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(before)
        if bars:
            logging.enable_progress_bar()


def _checked(path: Any) -> None:
    if path is not None and Path(path).is_dir():
        refuse_custom_code(Path(path))


def load_config(path: Path | str, **kwargs: Any) -> Any:
    """``AutoConfig.from_pretrained`` without custom code."""
    from transformers import AutoConfig

    _checked(path)
    with quiet_transformers():
        return AutoConfig.from_pretrained(path, trust_remote_code=False, **kwargs)


def load_tokenizer(path: Path | str, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained`` without custom code."""
    from transformers import AutoTokenizer

    _checked(path)
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)


def load_causal_lm(path: Path | str | None, *, model_class: Any = None, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` (or ``model_class``'s) without custom code."""
    if model_class is None:
        from transformers import AutoModelForCausalLM as model_class
    _checked(path)
    with quiet_transformers():
        return model_class.from_pretrained(path, trust_remote_code=False, **kwargs)
