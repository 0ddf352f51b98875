"""Ctrl-C while the last checkpoint is being written: finish writing it, then stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT for the block (in the main thread; elsewhere a no-op), so a second Ctrl-C
    during the save that the first one started cannot cut it short into a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
