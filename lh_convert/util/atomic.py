"""Writes that never leave half-written results behind.

Every output (a run folder, a checkpoint, an export, a JSON or text file) is built under a
hidden temporary sibling of its final name and renamed into place only when complete, so a
crash or Ctrl-C leaves either the finished output or nothing. ``temporary_sibling`` is the one
naming rule for those siblings: ``.<name>.tmp-<8 hex digits>``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import LhConvertError


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


def check_output_folder(final: Path) -> None:
    """Fail now, before any long work, if ``atomic_directory(final)`` would fail to start."""
    _make_temporary_sibling(Path(final).expanduser().absolute()).rmdir()


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Build a folder under a temporary name and move it to `final` only if the block succeeds.

    Yields a fresh empty folder `<parent>/.<final.name>.tmp-<random>` on the same file system
    as `final`. When the block returns, the folder is renamed to `final`; when it raises
    (including KeyboardInterrupt), the temporary folder is removed and the exception propagates.

    Raises:
        LhConvertError: `final` already exists, or its parent cannot be created or written to.
    """
    final = Path(final).expanduser().absolute()
    temporary = _make_temporary_sibling(final)
    try:
        yield temporary
        if final.exists() or final.is_symlink():  # appeared while we worked; never replace it
            raise LhConvertError(
                f"output folder {final} already exists; choose another --out or delete it"
            )
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
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
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
