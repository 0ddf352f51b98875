"""Writes that never leave half-written results behind.

Every output (a run folder, a checkpoint, an export, a JSON or text file) is built under a
hidden temporary sibling of its final name and renamed into place only when complete, so a
crash or Ctrl-C leaves either the finished output or nothing. ``temporary_sibling`` is the one
naming rule for those siblings: ``.<name>.tmp-<8 hex digits>``. A process that is killed
(SIGKILL, power loss) cannot remove its sibling; the writer holds an ``flock`` on it while it
works, so the next write of that name finds such leftovers unlocked and removes them
(``remove_stale_staging``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import LhConvertError


_STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]{8}$")


def temporary_sibling(final: Path) -> Path:
    """A hidden sibling of `final`, unique per call: `.<name>.tmp-<8 hex digits>`."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{secrets.token_hex(4)}")


def _ensure_parent_folder(parent: Path) -> None:
    """Create `parent` (and its ancestors) or raise the error that names what is in the way."""
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise LhConvertError(
                    f"{ancestor} is a file, not a folder, so the output cannot go under it; "
                    "choose another --out"
                )
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LhConvertError(
            f"cannot create the output's parent folder {parent} ({error.strerror or error}); "
            "choose another --out"
        ) from error


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable; a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _make_temporary_sibling(final: Path) -> Path:
    if final.exists() or final.is_symlink():
        raise LhConvertError(
            f"output folder {final} already exists; choose another --out or delete it"
        )
    _ensure_parent_folder(final.parent)
    temporary = temporary_sibling(final)
    try:
        temporary.mkdir()  # not tempfile.mkdtemp: that makes the folder 0700 whatever the umask
    except OSError as error:
        raise LhConvertError(
            f"output folder's parent {final.parent} is not writable ({error.strerror or error}); "
            "choose another --out"
        ) from error
    return temporary


def _try_lock(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding its exclusive flock, or None if another holds it
    (or the folder cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return None
    return descriptor


def remove_stale_staging(folder: Path, *, name: str | None = None) -> list[Path]:
    """Remove the staging folders ``.<name>.tmp-*`` in ``folder`` (any name when None) that no
    live writer holds; return what was removed."""
    folder, removed = Path(folder), []
    if not folder.is_dir():
        return removed
    for candidate in sorted(folder.iterdir()):
        match = _STAGING.match(candidate.name)
        if not match or (name is not None and match["name"] != name) or not candidate.is_dir() \
                or candidate.is_symlink():
            continue
        descriptor = _try_lock(candidate)
        if descriptor is None:
            continue  # a writer is at work in it (or it vanished meanwhile)
        try:
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            os.close(descriptor)
    return removed


def bytes_of(tensors: Iterable[Any]) -> int:
    """The bytes ``tensors`` (torch tensors or parameters) take written out: what a write of
    them needs free on disk."""
    return sum(t.numel() * t.element_size() for t in tensors)


def disk_full_error(error: BaseException, *, folder: Path, needed: int | None = None,
                    written: Path | None = None) -> LhConvertError | None:
    """The one-line error for a full disk (ENOSPC, also as safetensors reports it), else None.

    ``needed``: the bytes the write needs, where known; otherwise what ``written`` held."""
    text = str(error)
    if getattr(error, "errno", None) != errno.ENOSPC and "No space left" not in text \
            and "StorageFull" not in text:
        return None
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    done = 0 if written is None else sum(p.stat().st_size for p in Path(written).rglob("*")
                                         if p.is_file())
    need = (f"needed about {_size(needed)}" if needed else
            f"had written {_size(done)} when it ran out of space" if done else "ran out of space")
    have = f", {_size(free)} free now" if free is not None else ""
    return LhConvertError(f"the disk holding {folder} is full: the write {need}{have}; free some "
                          f"space there or choose an --out on a larger disk")


def _size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give every file under ``folder`` the mode the umask asks for (``0o666 & ~umask``).

    safetensors writes through its own private temporary file, so its outputs come out 0600
    whatever the umask; a shared run or export folder should be readable as the user set up.
    """
    mode = 0o666 & ~_current_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


def check_output_folder(final: Path) -> None:
    """Fail now, before any long work, if ``atomic_directory(final)`` would fail to start."""
    _make_temporary_sibling(Path(final).expanduser().absolute()).rmdir()


@contextmanager
def atomic_directory(final: Path, *, needed: int | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to `final` only if the block succeeds.

    Yields a fresh empty folder `<parent>/.<final.name>.tmp-<random>` on the same file system
    as `final`. When the block returns, the folder is renamed to `final`; when it raises
    (including KeyboardInterrupt), the temporary folder is removed and the exception propagates;
    a full disk becomes a one-line error naming the folder and ``needed`` bytes (where given).
    Stale staging folders of earlier, killed writes of the same name are removed first.

    Raises:
        LhConvertError: `final` already exists, its parent cannot be created or written to, or
            the disk filled up.
    """
    final = Path(final).expanduser().absolute()
    remove_stale_staging(final.parent, name=final.name)
    temporary = _make_temporary_sibling(final)
    lock = _try_lock(temporary)
    try:
        yield temporary
        if final.exists() or final.is_symlink():  # appeared while we worked; never replace it
            raise LhConvertError(
                f"output folder {final} already exists; choose another --out or delete it"
            )
        apply_umask(temporary)
        os.rename(temporary, final)
    except BaseException as error:
        full = disk_full_error(error, folder=final.parent, needed=needed, written=temporary)
        shutil.rmtree(temporary, ignore_errors=True)
        if full is not None:
            raise full from None
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _fsync_folder(final.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path`, atomically (`write_text_atomic`). The text is
    serialized first, so a TypeError leaves no file behind."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the new, never half: written to a
    hidden sibling, fsynced, then renamed over `path`; on any error the sibling is removed."""
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        full = disk_full_error(error, folder=path.parent, needed=len(text.encode()))
        if full is not None:
            raise full from None
        raise
    _fsync_folder(path.parent)
