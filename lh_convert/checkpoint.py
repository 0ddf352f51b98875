"""Run-directory and checkpoint-file I/O that never leaves half-written results behind.

Every output of a run is built in a hidden temporary folder next to its final place and
renamed into place only when complete, so a crash or Ctrl-C leaves either the finished
folder or nothing. Safetensors and GGUF files are checked from their headers alone (no
tensor is read), which catches the common failure of a download or copy cut short.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LhConvertError

SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"

# A safetensors header is JSON of a few KB to a few MB; anything larger is a corrupt length prefix.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _temporary_name(final: Path) -> Path:
    """A hidden sibling of `final`, unique per call: `.<name>.tmp-<8 hex digits>`."""
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
    temporary = _temporary_name(final)
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
    temporary = _temporary_name(path)
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


def _corrupt(file: Path, reason: str) -> LhConvertError:
    return LhConvertError(
        f"checkpoint file {file} is truncated or corrupt ({reason}); re-download it"
    )


def _check_safetensors_file(file: Path) -> None:
    """Parse the header of one safetensors file and check the file is exactly as long as it says."""
    size = file.stat().st_size
    if size < 8:
        raise _corrupt(file, f"{size} bytes, shorter than the 8-byte header length")
    with open(file, "rb") as handle:
        (header_bytes,) = struct.unpack("<Q", handle.read(8))
        if header_bytes > min(size - 8, _MAX_HEADER_BYTES):
            raise _corrupt(file, f"header length {header_bytes} does not fit in a {size}-byte file")
        raw_header = handle.read(header_bytes)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(file, f"header is not valid JSON: {error}") from error
    if not isinstance(header, dict):
        raise _corrupt(file, "header is not a JSON object")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise _corrupt(file, f"tensor {name!r} has no valid data_offsets")
        data_end = max(data_end, offsets[1])
    expected = 8 + header_bytes + data_end
    if size != expected:
        raise _corrupt(file, f"{size} bytes on disk, the header describes {expected}")


def verify_safetensors_dir(path: Path) -> None:
    """Check every `*.safetensors` file in `path` and the shard index, reading headers only.

    Each file's header must parse and the file must end exactly where the header's last tensor
    ends. If `model.safetensors.index.json` exists, every shard it names must exist in `path`.

    Raises:
        LhConvertError: no safetensors file, a truncated or corrupt file, or a bad index.
    """
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LhConvertError(
            f"no *.safetensors files in {path}; pass a folder holding the model's safetensors "
            "weights (pickled *.bin checkpoints are not loaded)"
        )
    for file in files:
        _check_safetensors_file(file)
    index_file = path / SAFETENSORS_INDEX_NAME
    if not index_file.exists():
        return
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
        shard_names = set(weight_map.values())
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise _corrupt(
            index_file, f"not a safetensors index with a weight_map: {error!r}"
        ) from error
    missing = sorted(name for name in shard_names if not (path / str(name)).is_file())
    if missing:
        raise LhConvertError(
            f"{index_file} lists shards that are not in {path}: {', '.join(missing)}; "
            "re-download the missing files"
        )


@dataclass(frozen=True)
class GgufSummary:
    """What a GGUF file's header says about it.

    Attributes:
        architecture: llama.cpp's architecture name (`general.architecture`), e.g. "llama".
        tensor_names: every tensor in the file, in llama.cpp's naming, e.g. "blk.0.attn_q.weight".
        special_tokens: the ids the file names for "bos", "eos", "unk" and "pad"
            (`tokenizer.ggml.<role>_token_id`), those it names.
    """

    architecture: str
    tensor_names: tuple[str, ...]
    special_tokens: tuple[tuple[str, int], ...] = ()


def read_gguf_summary(path: Path) -> GgufSummary:
    """Parse a GGUF file's header and check that every tensor's data lies inside the file.

    Parsed once per file version (path, size, modification time) and remembered.

    Raises:
        LhConvertError: the file is not a GGUF, or is truncated or corrupt.
    """
    stat = Path(path).stat()
    return _read_gguf_summary(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_gguf_summary(path: str, size: int, mtime_ns: int) -> GgufSummary:
    import gguf  # optional dependency (the "gguf" extra), needed only for GGUF input

    try:
        reader = gguf.GGUFReader(path)
        field = reader.fields["general.architecture"]
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8")
    except (ValueError, KeyError, IndexError, struct.error, UnicodeDecodeError) as error:
        raise _corrupt(Path(path), f"{type(error).__name__}: {error}") from error
    data_end = max((tensor.data_offset + tensor.n_bytes for tensor in reader.tensors), default=0)
    if data_end > size:
        raise _corrupt(Path(path), f"{size} bytes on disk, the tensors need {data_end}")
    special = []
    for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        field = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None and field.data:
            special.append((role, int(field.parts[field.data[0]][0])))
    return GgufSummary(
        architecture=architecture, tensor_names=tuple(tensor.name for tensor in reader.tensors),
        special_tokens=tuple(special),
    )


def unloaded_gguf_tensors(
    summary: GgufSummary, *, model_keys: set[str], num_layers: int
) -> list[str]:
    """The GGUF tensors that no parameter in `model_keys` (transformers names) maps to.

    transformers skips such tensors silently. Example: a Llama 3.1 GGUF stores its RoPE
    scaling as `rope_freqs.weight`, which no transformers parameter reads; a model loaded
    without it has different positions.
    """
    import gguf  # optional dependency (the "gguf" extra), needed only for GGUF input

    names = gguf.MODEL_ARCH_NAMES
    arch = next((key for key, name in names.items() if name == summary.architecture), None)
    if arch is None:
        return sorted(summary.tensor_names)
    name_map = gguf.get_tensor_name_map(arch, num_layers)
    loaded = {name_map.get_name(key, try_suffixes=(".weight", ".bias")) for key in model_keys}
    return sorted(name for name in summary.tensor_names if name not in loaded)
