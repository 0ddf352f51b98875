"""Header-only checks of weight files: safetensors and GGUF.

A file's header is parsed and its declared sizes checked against the file on disk (no tensor
is read), which catches the common failure of a download or copy cut short.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import LhConvertError

SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"

# A safetensors header is JSON of a few KB to a few MB; anything larger is a corrupt length prefix.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


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


def first_non_finite(tensors: dict) -> tuple[str, int] | None:
    """``(name, count)`` of the first floating-point tensor holding NaN or infinite values (a
    mapping of names to torch tensors), or None when every one is finite."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            count = int((~tensor.isfinite()).sum())
            if count:
                return name, count
    return None
