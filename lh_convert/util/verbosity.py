"""One verbosity setting for lh-convert and the libraries it drives (transformers, datasets,
huggingface_hub, lm-eval): their log levels and their progress bars.

Levels: -1 (``-q``): their errors only; 0 (the default): their warnings, none of their
progress bars (no repeated "Loading weights" bars; lh-convert's own bars stay); 1 (``-v``):
their info messages and progress bars; 2 (``-vv``): debug. The setting goes into the
environment variables each library reads when it is imported (so child processes follow
it too) and, for a library already imported, into its logging functions.
"""

from __future__ import annotations

import logging
import os
import sys

_NAMES = {-1: "error", 0: "warning", 1: "info", 2: "debug"}
# Library loggers that follow the setting (lm-eval's modules log under "lm_eval").
LIBRARY_LOGGERS = ("lm_eval", "lm-eval", "transformers", "datasets", "huggingface_hub")
_BAR_VARIABLES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
_LEVEL_VARIABLES = ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY")

_current = 0


def level() -> int:
    return _current


def set_verbosity(wanted: int, *, explicit: bool = True) -> None:
    """Apply ``wanted`` (clamped to -1..2). ``explicit=False`` (no flag given) leaves the
    environment variables a user set alone."""
    global _current
    _current = max(-1, min(2, wanted))
    name = _NAMES[_current]
    bars_off = "1" if _current < 1 else "0"
    for variable, value in ([(v, name) for v in _LEVEL_VARIABLES]
                            + [(v, bars_off) for v in _BAR_VARIABLES]):
        if explicit:
            os.environ[variable] = value
        else:
            os.environ.setdefault(variable, value)
    python_level = getattr(logging, name.upper())
    for logger in LIBRARY_LOGGERS:
        logging.getLogger(logger).setLevel(python_level)
    _apply_to_imported(python_level, bars=_current >= 1)


def _apply_to_imported(python_level: int, *, bars: bool) -> None:
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity(python_level)
        (transformers_logging.enable_progress_bar if bars
         else transformers_logging.disable_progress_bar)()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity(python_level)
        datasets.enable_progress_bars() if bars else datasets.disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        enable_progress_bars() if bars else disable_progress_bars()
