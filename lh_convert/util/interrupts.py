"""Ctrl-C while a checkpoint is being written: finish writing it, then stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold SIGINT back for the block and raise ``KeyboardInterrupt`` after it, if one came.

    A Ctrl-C during a save (a periodic one, or the one a first Ctrl-C started) then ends the
    run only once the checkpoint is whole, never in a traceback from inside the writer. In a
    thread other than the main one (where signals cannot be handled) this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    before = signal.signal(signal.SIGINT, lambda number, frame: pressed.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if pressed:
        raise KeyboardInterrupt
