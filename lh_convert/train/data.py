"""Training data for the long-context stages: read documents, tokenize once, cache.

Documents come from local `.txt` / `.jsonl` / `.parquet` files, folders of them, folders
written by `datasets` (`save_to_disk`), a hub dataset id, or, when no data is named, the
Python standard library's own source files: a corpus of long documents every machine has
offline. Each document is tokenized with the model's tokenizer and followed by EOS; the token
streams are cached on disk under a key of everything that changes them, so a repeated or
resumed run memory-maps them at once. The validation share is held out by source (whole
files), which keeps near-duplicate text inside one file from leaking across the split.
Packing into sequences and the batch order live in `packing.py`.

A token folder carries a tokenized corpus to a machine without the source files: it is the
cache folder itself (`train.bin`, `validation.bin`, `meta.json`; `save_token_corpus` copies
one), and `--data FOLDER` reads it directly after checking that it was tokenized with the
model's own tokenizer (`load_token_corpus`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..util.atomic import temporary_sibling, write_json_atomic
from ..util.errors import LhConvertError
from .data_sources import DataSource, file_source, resolve_sources
from .data_sources import documents as read_documents

_CACHE_FORMAT = 2  # bump when the cached files' layout or the tokenization recipe changes
TOKEN_FILES: tuple[str, ...] = ("meta.json", "train.bin", "validation.bin")
# Encoded when a corpus is written and again when a token folder is read elsewhere: the ids
# must agree even where another tokenizers version serializes the same tokenizer differently.
_PROBE_TEXT = (
    "def f(x: int) -> str:\n    return f\"{x!r:>8}\"  # tabs\tand   runs of spaces\n\n"
    "Déjà vu, naïve café — 東京 🚀 1234567890 3.14159 e-mail@example.org <|endoftext|>\n"
)
_NOT_CORPUS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_BATCH_DOCUMENTS, _BATCH_CHARACTERS = 64, 4_000_000  # documents per tokenizer call, at most


@dataclass(frozen=True)
class DataSpec:
    """What the user asked to train on.

    Attributes:
        paths: files, folders or hub dataset ids (`org/name`); empty means the built-in corpus.
        text_field: the field holding the text in `.jsonl`, `.parquet` and `datasets` data.
        validation_fraction: the share of sources (files) held out for validation, in (0, 1);
            with a single source, the share of its documents instead.
    """

    paths: tuple[str, ...] = ()
    text_field: str = "text"
    validation_fraction: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(str(path) for path in self.paths))
        if not 0.0 < self.validation_fraction < 1.0:
            raise LhConvertError(
                f"validation_fraction={self.validation_fraction!r} is out of range; "
                "pass a share strictly between 0 and 1, e.g. 0.05"
            )
        if not self.text_field.strip():
            raise LhConvertError("text_field is empty; pass the name of the field holding text")


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token streams on disk: documents, each followed by EOS, one after the other.

    Attributes:
        train: the training stream, read-only, uint16 (vocabularies up to 65,536) or uint32.
        validation: the held-out stream, same dtype.
        cache_path: the folder holding train.bin, validation.bin and meta.json.
        num_documents: (train, validation) document counts.
        description: one line saying where the data came from and how it was split.
    """

    train: np.memmap
    validation: np.memmap
    cache_path: Path
    num_documents: tuple[int, int]
    description: str


def builtin_corpus_files() -> list[Path]:
    """The running Python's standard-library `.py` files, sorted, without tests or site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path
        for path in root.rglob("*.py")
        if not _NOT_CORPUS & set(path.relative_to(root).parts[:-1])
        and not path.name.startswith("test_")
    )


def _resolve_sources(spec: DataSpec) -> tuple[list[DataSource], str]:
    """The sources to read, and a few words saying what they are."""
    if spec.paths:
        return resolve_sources(spec.paths)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = builtin_corpus_files()
    sources = [file_source(path, path.relative_to(root).as_posix()) for path in files]
    return sources, f"built-in corpus: {len(files):,} Python standard-library files (offline default)"


def tokenize_corpus(
    *, spec: DataSpec, tokenizer: Any, cache_dir: Path, progress: bool = True
) -> TokenizedCorpus:
    """Tokenize the data `spec` names into train and validation streams, or reuse the cache.

    Each document is encoded as the tokenizer encodes any text (a Llama tokenizer prepends
    BOS), special-token strings inside the text staying plain text, then followed by EOS.
    The cache folder is `cache_dir/<key>`, where the key hashes the inputs (paths, sizes and
    modification times, or dataset fingerprints), `text_field`, `validation_fraction` and the
    tokenizer. Files appear by atomic rename, meta.json last, so concurrent ranks and
    interrupted runs never read a half-written stream.

    Args:
        spec: the data and how to split it.
        tokenizer: the model's transformers tokenizer; it must have an EOS token.
        cache_dir: where tokenized corpora are kept.
        progress: show a progress bar (documents/s) while tokenizing.

    A single path that is a token folder (`save_token_corpus`) is read as it is, without
    sources or cache (`load_token_corpus`).

    Raises:
        LhConvertError: a path is missing, unsupported or unreadable, the data holds no text,
            a hub dataset cannot be reached, the tokenizer has no EOS token, or a token folder
            was tokenized with another tokenizer.
    """
    if tokenizer.eos_token_id is None:
        raise LhConvertError(
            "the tokenizer has no EOS token, so documents cannot be separated; "
            "use the model's own tokenizer, or set eos_token in its tokenizer_config.json"
        )
    token_folder = named_token_folder(spec)
    if token_folder is not None:
        return load_token_corpus(token_folder, tokenizer=tokenizer)
    sources, what = _resolve_sources(spec)
    folder = Path(cache_dir).expanduser() / _cache_key(sources, spec=spec, tokenizer=tokenizer)
    cached = _load_cached(folder)
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    held = _held_out_sources(sources, spec.validation_fraction) if len(sources) > 1 else set()
    documents = read_documents(sources, spec.text_field)
    tail_split: list[bool] = []
    labelled = (
        ((int(source.identity in held), text) for source, text in documents)
        if held
        else _labelled_by_document(
            (text for _, text in documents), spec.validation_fraction, tail_split=tail_split
        )
    )
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 2**16 else np.uint32)
    probe: list[str] = []
    writers = [_StreamWriter(folder / f"{name}.bin", dtype) for name in ("train", "validation")]
    try:
        with tqdm(desc="tokenizing", unit="doc", disable=not progress, dynamic_ncols=True) as bar:
            _tokenize_into(writers, _keep_probe(labelled, probe), tokenizer=tokenizer, bar=bar)
        counts = (writers[0].documents, writers[1].documents)
        if counts == (0, 0):
            raise LhConvertError(
                f"the data ({what}) holds no text: every document is empty; pass data with text"
            )
        if 0 in counts:
            raise LhConvertError(
                f"the data ({what}) leaves no {'training' if counts[0] == 0 else 'validation'} "
                "documents after the split; add data or change validation_fraction"
            )
        for writer in writers:
            writer.commit()
    finally:
        for writer in writers:
            writer.abort()
    if held:
        split = f"{len(held):,} of {len(sources):,} sources held out for validation"
    elif tail_split:
        split = "one source, so its single document was split: its last lines are held out"
    else:
        split = (
            f"one source, so its documents were split instead of files: {counts[1]:,} of "
            f"{sum(counts):,} held out for validation"
        )
    write_json_atomic(
        folder / "meta.json",
        {
            "format": _CACHE_FORMAT,
            "dtype": dtype.name,
            "num_tokens": [writer.tokens for writer in writers],
            "num_documents": list(counts),
            "description": f"{what}; {split}",
            "tokenizer": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
            "tokenizer_fingerprint": _tokenizer_fingerprint(tokenizer),
            "vocabulary_fingerprint": _vocabulary_fingerprint(tokenizer),
            "probe_text": _PROBE_TEXT + "".join(probe),
            "probe_ids": _encode(tokenizer, _PROBE_TEXT + "".join(probe)),
            "eos_token_id": tokenizer.eos_token_id,
            "text_field": spec.text_field,
            "validation_fraction": spec.validation_fraction,
            "validation_sources": [source.name for source in sources if source.identity in held],
        },
    )
    corpus = _load_cached(folder)
    if corpus is None:
        raise LhConvertError(f"the token cache in {folder} does not read back; check that disk")
    return corpus


# ---- splitting ---------------------------------------------------------------------------------


def _held_out_sources(sources: list[DataSource], fraction: float) -> set[str]:
    """The identities of round(fraction * n) sources (at least one, never all), chosen by a
    hash of their names: deterministic, and independent of where the data lies on disk."""
    count = min(max(1, round(fraction * len(sources))), len(sources) - 1)
    ranked = sorted(sources, key=lambda s: (hashlib.sha256(s.name.encode()).hexdigest(), s.name))
    return {source.identity for source in ranked[:count]}


def _labelled_by_document(
    documents: Iterator[str], fraction: float, *, tail_split: list[bool]
) -> Iterator[tuple[int, str]]:
    """(0 train / 1 validation, text) for one source's documents: document 0, then one in
    every 1/fraction, is held out. A lone document is cut at a line near its tail instead
    (and `tail_split` gets an entry saying so)."""
    first, second = next(documents, None), next(documents, None)
    if first is not None and second is None:
        cut = min(max(1, int(len(first) * (1 - fraction))), len(first) - 1)
        newline = first.rfind("\n", 0, cut)
        cut = newline + 1 if newline > 0 else cut
        tail_split.append(True)
        yield from (
            (label, part) for label, part in ((0, first[:cut]), (1, first[cut:])) if part.strip()
        )
        return
    heads = [first, second] if first is not None else []
    for index, text in enumerate(itertools.chain(heads, documents)):
        yield int(math.ceil((index + 1) * fraction) > math.ceil(index * fraction)), text


# ---- token folders ------------------------------------------------------------------------------


def save_token_corpus(corpus: TokenizedCorpus, *, out: Path) -> Path:
    """Copy `corpus` (a cache folder from `tokenize_corpus`) into the token folder `out`.

    `out` then holds `train.bin` and `validation.bin` (token ids, uint16 for vocabularies up to
    65,536, else uint32; documents each followed by EOS, the validation documents held out by
    source as `tokenize_corpus` splits them) and `meta.json` (dtype, token and document
    counts, description, the tokenizer's fingerprint, and a probe text with its ids).
    `--data out` reads it on any machine with the same tokenizer. Written atomically.

    Raises:
        LhConvertError: `out` exists, or `corpus` was cached before fingerprints were recorded.
    """
    out = Path(out)
    meta = json.loads((corpus.cache_path / "meta.json").read_text(encoding="utf-8"))
    if "tokenizer_fingerprint" not in meta:
        raise LhConvertError(f"{corpus.cache_path} records no tokenizer fingerprint; delete it "
                             "and tokenize again")
    if out.exists():
        raise LhConvertError(f"{out} exists; pass a new folder for the token corpus")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(out)
    staging.mkdir()
    try:
        for name in TOKEN_FILES:
            shutil.copyfile(corpus.cache_path / name, staging / name)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_token_corpus(folder: Path, *, tokenizer: Any) -> TokenizedCorpus:
    """The token folder `folder` (`save_token_corpus`), memory-mapped in place.

    It must have been tokenized with `tokenizer`: the fingerprints match, or (another
    tokenizers or transformers version serializing the same tokenizer differently) the
    vocabularies match and the recorded probe text encodes to the recorded ids.

    Raises:
        LhConvertError: the folder is incomplete or of another format, or the tokenizer differs.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        recorded = meta["tokenizer_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        meta, recorded = {}, None
    if meta.get("format") != _CACHE_FORMAT or recorded is None:
        raise LhConvertError(f"token folder {folder} is not a complete format-{_CACHE_FORMAT} "
                             "token corpus; write it again with lh_convert.train.data.save_token_corpus")
    same = recorded == _tokenizer_fingerprint(tokenizer) or (
        meta.get("vocabulary_fingerprint") == _vocabulary_fingerprint(tokenizer)
        and meta.get("probe_ids") == _encode(tokenizer, meta.get("probe_text", "")))
    if not same:
        mine = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise LhConvertError(
            f"token folder {folder} was tokenized with another tokenizer ({meta.get('tokenizer')}, "
            f"fingerprint {recorded[:12]}) than this model's ({mine}, fingerprint "
            f"{_tokenizer_fingerprint(tokenizer)[:12]}); tokenize the data with this model's "
            "tokenizer, or pass the source files as --data")
    corpus = _load_cached(folder)
    if corpus is None:
        raise LhConvertError(f"token folder {folder} is incomplete (a .bin file is missing or "
                             "its size differs from meta.json); copy it again")
    return dataclasses.replace(corpus, description=f"token folder {folder}: {corpus.description}")


def named_token_folder(spec: DataSpec) -> Path | None:
    """The token folder `spec` names, if it names one (it must then be the only path)."""
    found = [Path(p).expanduser() for p in spec.paths
             if all((Path(p).expanduser() / name).is_file() for name in TOKEN_FILES)]
    if found and len(spec.paths) > 1:
        raise LhConvertError(f"token folder {found[0]} is already tokenized and split, so it "
                             "cannot be combined with other data; pass it as the only --data")
    return found[0] if found else None


def _keep_probe(labelled: Iterator[tuple[int, str]], probe: list[str]
                ) -> Iterator[tuple[int, str]]:
    """Pass `labelled` through, keeping the head of the first document in `probe`."""
    for label, text in labelled:
        if not probe:
            probe.append(text[:4000])
        yield label, text


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True, split_special_tokens=True,
                          verbose=False)["input_ids"])


# ---- tokenizing and the cache ------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything in the tokenizer that changes the ids: its full serialized form
    when it has one (vocabulary, merges, normalizer, post-processor), else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(sorted(tokenizer.get_vocab().items()))
    )
    extra = [type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token_id]
    return hashlib.sha256((text + json.dumps(extra)).encode()).hexdigest()


def _vocabulary_fingerprint(tokenizer: Any) -> str:
    """A hash of the vocabulary, the tokenizer's size and its EOS id, serialization aside."""
    extra = [len(tokenizer), tokenizer.eos_token_id]
    return hashlib.sha256(json.dumps([sorted(tokenizer.get_vocab().items()), extra]).encode()
                          ).hexdigest()


def _cache_key(sources: list[DataSource], *, spec: DataSpec, tokenizer: Any) -> str:
    recipe = {
        "format": _CACHE_FORMAT,
        "sources": sorted(source.identity for source in sources),
        "text_field": spec.text_field,
        "validation_fraction": spec.validation_fraction,
        "tokenizer": _tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


def _load_cached(folder: Path) -> TokenizedCorpus | None:
    """The corpus in `folder` if it is complete (meta.json written last, sizes as recorded)."""
    files = [folder / "train.bin", folder / "validation.bin"]
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        sizes = [tokens * dtype.itemsize for tokens in meta["num_tokens"]]
        if meta["format"] != _CACHE_FORMAT or [file.stat().st_size for file in files] != sizes:
            return None
        train, validation = (np.memmap(file, dtype=dtype, mode="r") for file in files)
        return TokenizedCorpus(
            train=train,
            validation=validation,
            cache_path=folder,
            num_documents=tuple(meta["num_documents"]),
            description=meta["description"],
        )
    except (OSError, ValueError, KeyError, TypeError):  # absent, half-written or from elsewhere
        return None


class _StreamWriter:
    """Appends token ids to a hidden temporary file; `commit` renames it into place."""

    def __init__(self, final: Path, dtype: np.dtype) -> None:
        self.final, self.dtype = final, dtype
        self.temporary = temporary_sibling(final)
        self.handle = open(self.temporary, "xb")
        self.documents = self.tokens = 0

    def write(self, ids: list[int]) -> None:
        self.handle.write(np.asarray(ids, dtype=self.dtype).tobytes())
        self.documents += 1
        self.tokens += len(ids)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temporary, self.final)

    def abort(self) -> None:
        """Remove the temporary file if it was not committed; harmless after `commit`."""
        self.handle.close()
        self.temporary.unlink(missing_ok=True)


def _tokenize_into(
    writers: list[_StreamWriter],
    labelled: Iterator[tuple[int, str]],
    *,
    tokenizer: Any,
    bar: tqdm,
) -> None:
    """Encode documents in batches (a fast tokenizer spreads a batch over threads) and append
    each, followed by EOS, to the writer its label names."""
    eos = tokenizer.eos_token_id
    batch: list[tuple[int, str]] = []

    def flush() -> None:
        encoded = tokenizer(
            [text for _, text in batch],
            add_special_tokens=True,
            split_special_tokens=True,
            verbose=False,
            return_attention_mask=False,
        )["input_ids"]
        for (label, _), ids in zip(batch, encoded, strict=True):
            writers[label].write(ids if ids and ids[-1] == eos else [*ids, eos])
        bar.update(len(batch))
        batch.clear()

    characters = 0
    for label, text in labelled:
        batch.append((label, text))
        characters += len(text)
        if len(batch) >= _BATCH_DOCUMENTS or characters >= _BATCH_CHARACTERS:
            flush()
            characters = 0
    if batch:
        flush()
