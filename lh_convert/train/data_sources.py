"""Where training documents come from: local files and folders, `datasets` folders, hub ids.

Each source is one unit of the train/validation split (a file, or a whole dataset); its
identity (path, size and mtime, or the dataset fingerprint) goes into the token cache's key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.errors import LhConvertError
from ..util.hub import HUB_ID, HUB_TIMEOUT_S, call_with_deadline, short_reason

_KINDS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(_KINDS)
_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")


@dataclass(frozen=True)
class DataSource:
    """One unit of the split: a file, or a whole `datasets` dataset."""

    name: str  # relative to what the user named: decides the split, so moving data keeps it
    kind: str  # "text", "jsonl", "parquet" or "dataset"
    identity: str  # what the cache key hashes: path, size and mtime, or the dataset fingerprint
    path: Path | None = None
    dataset: Any = field(default=None, compare=False, repr=False)


# ---- finding the sources -----------------------------------------------------------------------


def resolve_sources(paths: tuple[str, ...]) -> tuple[list[DataSource], str]:
    """The sources ``paths`` name, sorted by name, and a few words saying what they are."""
    unique = {source.identity: source for spec_path in paths for source in _sources_for(spec_path)}
    ordered = sorted(unique.values(), key=lambda source: (source.name, source.identity))
    files = sum(source.kind != "dataset" for source in ordered)
    parts = [f"{files:,} file{'s' * (files != 1)}"] if files else []
    parts += [source.name for source in ordered if source.kind == "dataset"]
    return ordered, f"data: {' + '.join(parts)} from {', '.join(paths)}"


def _sources_for(spec_path: str) -> list[DataSource]:
    path = Path(spec_path).expanduser().resolve()
    supported = ", ".join(SUPPORTED_SUFFIXES)
    if path.is_file():
        if path.suffix.lower() not in _KINDS:
            raise LhConvertError(
                f"data file {spec_path} has an unsupported type {path.suffix or '(no suffix)'}; "
                f"pass {supported} files, folders of them, or a saved datasets folder"
            )
        return [file_source(path, path.name)]
    if path.is_dir():
        sources = []
        for folder, subfolders, names in os.walk(path, followlinks=True):
            here = Path(folder)
            if any((here / marker).is_file() for marker in _DATASET_MARKERS):
                subfolders.clear()  # the saved dataset's own files are not documents
                sources.append(_saved_dataset_source(here, name=here.relative_to(path.parent)))
                continue
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            sources += [
                file_source(here / name, (here / name).relative_to(path).as_posix())
                for name in sorted(names)
                if Path(name).suffix.lower() in _KINDS and not name.startswith(".")
            ]
        if not sources:
            raise LhConvertError(
                f"data folder {spec_path} holds no {supported} files and no saved datasets; "
                "point --data at the files to train on"
            )
        return sources
    if HUB_ID.fullmatch(spec_path) and not looks_like_path(spec_path):
        return [_hub_dataset_source(spec_path)]
    raise LhConvertError(
        f"data path {spec_path} does not exist; pass existing {supported} files or folders, "
        "a saved datasets folder, or a hub dataset id org/name"
    )


def looks_like_path(spec_path: str) -> bool:
    """Meant as a file system path, never a hub id: starts with ``.``, ``~`` or ``/``, or ends
    in a data file's suffix."""
    return (spec_path.startswith((".", "~", "/"))
            or Path(spec_path).suffix.lower() in (*_KINDS, ".json", ".csv", ".gz", ".zst"))


def file_source(path: Path, name: str) -> DataSource:
    resolved = path.resolve()
    status = resolved.stat()
    return DataSource(
        name=name,
        kind=_KINDS.get(resolved.suffix.lower(), "text"),
        path=resolved,
        identity=f"{resolved}|{status.st_size}|{status.st_mtime_ns}",
    )


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as error:
        raise LhConvertError(
            "reading saved or hub datasets needs the `datasets` package; pip install datasets"
        ) from error
    return datasets


def _dataset_source(dataset: Any, *, name: str) -> DataSource:
    if isinstance(dataset, _datasets().DatasetDict):
        if "train" not in dataset:
            raise LhConvertError(
                f"dataset {name} has no 'train' split (it has {', '.join(dataset)}); save the "
                "split to train on with Dataset.save_to_disk and pass that folder"
            )
        dataset = dataset["train"]
    return DataSource(
        name=name, kind="dataset", identity=f"dataset:{dataset._fingerprint}", dataset=dataset
    )


def _saved_dataset_source(folder: Path, *, name: Path) -> DataSource:
    try:
        dataset = _datasets().load_from_disk(str(folder))
    except (OSError, ValueError) as error:
        raise LhConvertError(
            f"cannot load the saved dataset in {folder} ({type(error).__name__}: {error}); "
            "save it again with Dataset.save_to_disk"
        ) from error
    return _dataset_source(dataset, name=name.as_posix())


def _hub_dataset_source(hub_id: str) -> DataSource:
    """The "train" split of a hub dataset, or an error within HUB_TIMEOUT_S when there is no
    hub. In offline mode (HF_HUB_OFFLINE) only a copy cached earlier is used."""
    import huggingface_hub

    datasets, timeout_s = _datasets(), HUB_TIMEOUT_S
    offline = huggingface_hub.constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE
    if not offline:  # datasets itself retries for about 25 s before giving up
        try:
            call_with_deadline(
                lambda: huggingface_hub.HfApi().dataset_info(hub_id, timeout=timeout_s),
                timeout_s=timeout_s,
            )
        except Exception as error:  # every failure means the same to the user: no hub
            raise _hub_error(hub_id, short_reason(error, kind="dataset")) from error
    try:
        dataset = datasets.load_dataset(hub_id, split="train", streaming=False)
    except Exception as error:  # offline without a cached copy, or a failed download
        reason = ("HF_HUB_OFFLINE is set and no copy is cached" if offline
                  else short_reason(error, kind="dataset"))
        raise _hub_error(hub_id, reason) from error
    return _dataset_source(dataset, name=hub_id)


def _hub_error(hub_id: str, reason: str) -> LhConvertError:
    return LhConvertError(
        f"cannot load hub dataset {hub_id!r} ({reason}) and no local path {hub_id} exists; "
        f"save it where the hub is reachable with datasets.load_dataset({hub_id!r})"
        ".save_to_disk(DIR) and pass --data DIR, or pass local .txt/.jsonl/.parquet files"
    )


def documents(sources: Iterable[DataSource], text_field: str) -> Iterator[tuple[DataSource, str]]:
    """The non-blank documents of `sources`, in order, each with its source."""
    for source in sources:
        if source.kind == "text":
            texts: Iterable[str | None] = [_read_text(source.path)]
        elif source.kind == "jsonl":
            texts = _jsonl_documents(source.path, text_field)
        elif source.kind == "parquet":
            texts = _parquet_documents(source.path, text_field)
        else:
            if text_field not in source.dataset.column_names:
                raise _missing_column(source.name, text_field, source.dataset.column_names)
            texts = (
                text
                for batch in source.dataset.select_columns([text_field]).iter(1000)
                for text in batch[text_field]
            )
        for text in texts:
            if text is not None and not isinstance(text, str):
                raise LhConvertError(
                    f"{source.name} field {text_field!r} holds {type(text).__name__} values, "
                    "not strings; pass the field holding the text as the text field"
                )
            if text and text.strip():  # None: a missing value in a table
                yield source, text


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise LhConvertError(
            f"data file {path} is not UTF-8 text (byte {error.start}); convert it to UTF-8"
        ) from error


def _missing_column(where: str, text_field: str, columns: Iterable[str]) -> LhConvertError:
    return LhConvertError(
        f"{where} has no column {text_field!r} (columns: {', '.join(columns)}); "
        "pass the column holding the text as the text field"
    )


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise LhConvertError(
                    f"{path}:{number} is not valid JSON ({error.msg}); write one object per line"
                ) from error
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise LhConvertError(
                    f"{path}:{number} has no {text_field!r} field (found: {keys}); "
                    "pass the field holding the text as the text field"
                )
            if not isinstance(record[text_field], str):
                raise LhConvertError(
                    f"{path}:{number} field {text_field!r} is a "
                    f"{type(record[text_field]).__name__}, not a string; store text as strings"
                )
            yield record[text_field]


def _parquet_documents(path: Path, text_field: str) -> Iterator[str | None]:
    import pyarrow

    table = open_parquet(path)
    if text_field not in table.schema_arrow.names:
        raise _missing_column(str(path), text_field, table.schema_arrow.names)
    try:
        for batch in table.iter_batches(batch_size=1000, columns=[text_field]):
            yield from batch.column(0).to_pylist()
    except (pyarrow.ArrowException, OSError) as error:
        raise _bad_parquet(path, error) from None


def open_parquet(path: Path) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` (footer and schema read), or a one-line error."""
    import pyarrow
    import pyarrow.parquet as parquet

    try:
        return parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise _bad_parquet(path, error) from None


def _bad_parquet(path: Path, error: Exception) -> LhConvertError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return LhConvertError(f"data file {path} is not a readable parquet file ({reason}); "
                          f"write it again, or remove it from --data")
