"""One process at a time per run folder: an exclusive ``flock`` on ``RUN/.lock``.

The kernel drops the lock when its process ends however it ends (exit, Ctrl-C, SIGKILL), so a
lock file left by a dead process is stale by construction and the next run simply takes it;
the file only records the holder's pid for the message a second process gets.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LhConvertError

LOCK_NAME = ".lock"


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextmanager
def run_lock(run_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block, or raise at once if another process holds it.

    ``enabled=False`` (every rank but the first under torchrun) takes no lock.
    """
    if not enabled:
        yield
        return
    lock = Path(run_dir) / LOCK_NAME
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise LhConvertError(f"cannot lock the run folder {run_dir} ({error.strerror or error}); "
                             f"it must be writable by you") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LhConvertError(
                f"{run_dir} is in use by another lh-convert process{_holder(lock)}; wait for it "
                f"to finish or stop it, then run again") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
