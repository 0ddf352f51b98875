"""Content hashes of written folders, checked before their files are trusted again.

A checkpoint, a run folder's converted weights and an export carry ``checksums.json``: the
sha256 of each file present when the folder was written. Reading such a folder back (resume,
recover, export, eval) first recomputes them, so flipped bytes in tensor data, which the
safetensors header checks cannot see, are refused instead of trained on or exported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import LhConvertError

CHECKSUMS_NAME = "checksums.json"
_CHUNK = 8 * 1024 * 1024


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path) -> Path:
    """Record the sha256 of every file directly inside ``folder`` (not hidden ones, not itself)."""
    folder = Path(folder)
    files = {path.name: file_sha256(path) for path in sorted(folder.iterdir())
             if path.is_file() and path.name != CHECKSUMS_NAME and not path.name.startswith(".")}
    target = folder / CHECKSUMS_NAME
    target.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1) + "\n",
                      encoding="utf-8")
    return target


def recorded_files(folder: Path) -> dict[str, str] | None:
    """The recorded name -> sha256 map, or None for a folder written without one."""
    path = Path(folder) / CHECKSUMS_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        files = raw["files"]
        if raw.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 file list")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise LhConvertError(f"{path} is unreadable ({type(error).__name__}); the folder was "
                             f"damaged") from None
    return {str(name): str(digest) for name, digest in files.items()}


def verify_checksums(folder: Path, *, fix: str) -> None:
    """Raise naming the first file whose content no longer matches ``checksums.json``.

    A folder without ``checksums.json`` (written by an older lh-convert) is accepted as it is.
    ``fix`` ends the message: what the user can do (e.g. resume from the previous checkpoint).
    """
    folder = Path(folder)
    files = recorded_files(folder)
    for name, digest in (files or {}).items():
        path = folder / name
        if not path.is_file():
            raise LhConvertError(f"{path} is missing (it is listed in {CHECKSUMS_NAME}); {fix}")
        if file_sha256(path) != digest:
            raise LhConvertError(f"{path} does not match the sha256 recorded when it was written "
                                 f"({CHECKSUMS_NAME}): its content changed or the disk corrupted "
                                 f"it; {fix}")
