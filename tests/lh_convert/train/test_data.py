"""The data pipeline: every input kind, EOS separation, the split, the cache, packing, batching
with exact resume, and every bad-input error. CPU only, offline, a few seconds.

The hub tests never touch the network: they switch on offline mode, or point the hub client
at a closed port or at a local socket that never answers.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import huggingface_hub.constants
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from lh_convert.train import data
from lh_convert.train import data_sources
from lh_convert.train.data import (
    DataSpec,
    TokenizedCorpus,
    builtin_corpus_files,
    save_token_corpus,
    tokenize_corpus,
)
from lh_convert.util.errors import LhConvertError
from lh_convert.train.packing import PackedSequences, batch_iterator

DOCUMENTS = [f"document {i}: " + "lorem ipsum dolor sit amet " * (i + 1) for i in range(12)]
Tokenize = Callable[..., TokenizedCorpus]
Decode = Callable[..., list[str]]


@pytest.fixture
def tokenize(tiny_tokenizer, tmp_path: Path) -> Tokenize:
    """`tokenize(*paths, tokenizer=tiny, cache=tmp_path / "cache", **spec)`, without a bar."""

    def run(*paths: Path | str, tokenizer=tiny_tokenizer, cache: Path | None = None, **spec):
        return tokenize_corpus(
            spec=DataSpec(paths=tuple(str(path) for path in paths), **spec),
            tokenizer=tokenizer,
            cache_dir=cache or tmp_path / "cache",
            progress=False,
        )

    return run


@pytest.fixture
def decode(tiny_tokenizer) -> Decode:
    """`decode(*streams)`: the documents of token streams, decoded, cut at EOS."""

    def run(*streams: np.ndarray) -> list[str]:
        documents = []
        for stream in streams:
            ids = stream.tolist()
            assert ids[-1] == tiny_tokenizer.eos_token_id  # the last document ends too
            start = 0
            for index, token in enumerate(ids):
                if token == tiny_tokenizer.eos_token_id:
                    documents.append(tiny_tokenizer.decode(ids[start:index]))
                    start = index + 1
        return documents

    return run


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _text_folder(folder: Path, count: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"part-{i:02d}.txt").write_text(f"file {i}\n{DOCUMENTS[i % 12]}")
    return folder


# ---- input kinds and EOS ------------------------------------------------------------------------


def test_jsonl_documents_are_separated_by_eos(tokenize, decode, tmp_path: Path) -> None:
    texts = ["alpha beta", "gamma </s> delta", "", "epsilon"]  # "</s>" in text stays text
    file = _write_jsonl(tmp_path / "d.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    corpus = tokenize(file)
    assert corpus.num_documents == (2, 1)  # the blank document is skipped; document 0 held out
    assert corpus.train.dtype == np.uint16 and isinstance(corpus.train, np.memmap)
    assert decode(corpus.validation) == ["<s>alpha beta"]
    assert decode(corpus.train) == ["<s>gamma </s> delta", "<s>epsilon"]
    assert "its documents were split instead of files: 1 of 3" in corpus.description


def test_txt_files_and_recursive_folders(tokenize, decode, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    (folder / "b" / "c").mkdir(parents=True)
    (folder / "z.txt").write_text("zeta text")
    (folder / "b" / "c" / "deep.TXT").write_text("deep text")
    (folder / "b" / "notes.md").write_text("ignored: not a supported type")
    (folder / ".hidden.txt").write_text("ignored: hidden")
    extra = tmp_path / "extra.txt"
    extra.write_text("extra text\nsecond line")
    corpus = tokenize(folder, extra, validation_fraction=0.3)
    assert sorted(decode(corpus.train, corpus.validation)) == [
        "<s>deep text",
        "<s>extra text\nsecond line",
        "<s>zeta text",
    ]
    assert corpus.num_documents == (2, 1)
    assert corpus.description == (
        f"data: 3 files from {folder}, {extra}; 1 of 3 sources held out for validation"
    )


def test_single_txt_file_is_split_at_a_line_near_its_tail(tokenize, decode, tmp_path) -> None:
    lines = [f"line {i}\n" for i in range(100)]
    (tmp_path / "book.txt").write_text("".join(lines))
    corpus = tokenize(tmp_path / "book.txt", validation_fraction=0.1)
    head, tail = decode(corpus.train, corpus.validation)
    assert (head, tail) == ("<s>" + "".join(lines[:90]), "<s>" + "".join(lines[90:]))
    assert "its single document was split" in corpus.description


def test_parquet(tokenize, decode, tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"body": [*DOCUMENTS[:5], None], "n": list(range(6))}), tmp_path / "d.parquet"
    )
    corpus = tokenize(tmp_path / "d.parquet", text_field="body")
    expected = sorted("<s>" + document for document in DOCUMENTS[:5])
    assert sorted(decode(corpus.train, corpus.validation)) == expected
    with pytest.raises(LhConvertError, match=r"d.parquet has no column 'text' \(columns: body, n"):
        tokenize(tmp_path / "d.parquet")


@pytest.mark.parametrize("as_dict", [False, True], ids=["Dataset", "DatasetDict"])
def test_saved_datasets_folder(tokenize, decode, tmp_path: Path, as_dict: bool) -> None:
    dataset = datasets.Dataset.from_dict({"text": DOCUMENTS[:6]})
    if as_dict:
        dataset = datasets.DatasetDict({"train": dataset, "test": dataset.select([0])})
    dataset.save_to_disk(str(tmp_path / "saved"))
    corpus = tokenize(tmp_path / "saved")
    assert decode(corpus.train) == ["<s>" + document for document in DOCUMENTS[1:6]]
    assert corpus.num_documents == (5, 1)
    again = tokenize(tmp_path / "saved")
    assert again.cache_path == corpus.cache_path  # the fingerprint is stable across loads


def test_saved_dataset_dict_without_train(tokenize, tmp_path: Path) -> None:
    test_split = datasets.Dataset.from_dict({"text": ["a"]})
    datasets.DatasetDict({"test": test_split}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(LhConvertError, match=r"has no 'train' split \(it has test\)"):
        tokenize(tmp_path / "saved")


# ---- hub ids, offline ---------------------------------------------------------------------------

HUB_ERROR = r"cannot load hub dataset 'lh-convert-tests/no-such' \({reason}\) and no local path"


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


def _assert_hub_fails_fast(tokenize: Tokenize, *, reason: str, limit_s: float) -> None:
    start = time.perf_counter()
    with pytest.raises(LhConvertError, match=HUB_ERROR.format(reason=reason)):
        tokenize("lh-convert-tests/no-such")
    elapsed = time.perf_counter() - start
    print(f"hub dataset failure took {elapsed:.2f} s")
    assert elapsed < limit_s


@pytest.mark.usefixtures("empty_hub_cache")
def test_hub_dataset_offline_mode(tokenize, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    reason = "HF_HUB_OFFLINE is set and no copy is cached"
    _assert_hub_fails_fast(tokenize, reason=reason, limit_s=2.0)


@pytest.mark.usefixtures("empty_hub_cache")
def test_hub_dataset_connection_refused(tokenize, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    _assert_hub_fails_fast(tokenize, reason="ConnectError: .*", limit_s=3.0)


@pytest.mark.usefixtures("empty_hub_cache")
def test_hub_dataset_that_never_answers_is_bounded(tokenize, monkeypatch) -> None:
    monkeypatch.setattr(data_sources, "HUB_TIMEOUT_S", 1.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        reason = "(?:(?:TimeoutError: )?no answer within 1 s|ReadTimeout.*)"
        _assert_hub_fails_fast(tokenize, reason=reason, limit_s=3.0)


# ---- the split ----------------------------------------------------------------------------------


def test_split_by_file_is_deterministic_disjoint_and_location_free(
    tokenize, decode, tmp_path: Path
) -> None:
    folder = _text_folder(tmp_path / "a" / "corpus")
    corpus = tokenize(folder, validation_fraction=0.2)
    train, validation = set(decode(corpus.train)), set(decode(corpus.validation))
    every_file = {"<s>" + path.read_text() for path in folder.iterdir()}
    assert len(validation) == 4 and not train & validation and train | validation == every_file
    moved = shutil.copytree(folder, tmp_path / "b" / "elsewhere" / "corpus")
    again = tokenize(moved, cache=tmp_path / "cache2", validation_fraction=0.2)
    assert again.cache_path.name != corpus.cache_path.name
    assert set(decode(again.validation)) == validation
    meta = json.loads((corpus.cache_path / "meta.json").read_text())
    assert len(meta["validation_sources"]) == 4


def test_single_source_document_split_is_every_nth(tokenize, decode, tmp_path: Path) -> None:
    file = _write_jsonl(tmp_path / "d.jsonl", [{"text": f"doc {i}"} for i in range(40)])
    corpus = tokenize(file, validation_fraction=0.1)
    assert decode(corpus.validation) == [f"<s>doc {i}" for i in (0, 10, 20, 30)]
    assert corpus.num_documents == (36, 4)


# ---- the cache ----------------------------------------------------------------------------------


def test_cache_hit_does_not_tokenize(tokenize, tmp_path: Path, monkeypatch) -> None:
    folder = _text_folder(tmp_path / "corpus")
    first = tokenize(folder)
    files = sorted(path.name for path in first.cache_path.iterdir())
    assert files == ["meta.json", "train.bin", "validation.bin"]  # no temporary files left

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("tokenized although the cache holds this corpus")

    monkeypatch.setattr(data, "_tokenize_into", refuse)
    second = tokenize(folder)
    assert second.cache_path == first.cache_path and second.description == first.description
    assert np.array_equal(second.train, first.train) and second.num_documents == first.num_documents


def test_cache_key_follows_files_settings_and_tokenizer(
    tokenize, tiny_tokenizer, tmp_path: Path
) -> None:
    folder = _text_folder(tmp_path / "corpus")
    other_tokenizer = copy.deepcopy(tiny_tokenizer)
    other_tokenizer.add_tokens(["lorem ipsum"])
    keys = {
        tokenize(folder).cache_path,
        tokenize(folder, tokenizer=other_tokenizer).cache_path,
        tokenize(folder, validation_fraction=0.1).cache_path,
    }
    file = folder / "part-03.txt"
    file.write_text(file.read_text() + " changed")
    keys.add(tokenize(folder).cache_path)
    os.utime(file, ns=(0, 0))  # same size, other modification time
    keys.add(tokenize(folder).cache_path)
    assert len(keys) == 5


def test_incomplete_cache_is_rebuilt(tokenize, tmp_path: Path) -> None:
    folder = _text_folder(tmp_path / "corpus")
    first = tokenize(folder)
    expected = np.array(first.train)
    with open(first.cache_path / "train.bin", "r+b") as handle:
        handle.truncate(10)
    assert np.array_equal(tokenize(folder).train, expected)


# ---- the built-in corpus ------------------------------------------------------------------------


def test_builtin_corpus_is_found_and_substantial() -> None:
    files = builtin_corpus_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert len(files) > 500 and sum(path.stat().st_size for path in files) > 10_000_000
    assert files == sorted(files) and root / "argparse.py" in files
    folders = {part for path in files for part in path.relative_to(root).parts[:-1]}
    assert not folders & {"test", "tests", "idle_test", "site-packages"}


def test_builtin_corpus_tokenizes(tiny_tokenizer, decode, tmp_path: Path, monkeypatch) -> None:
    subset = [path for path in builtin_corpus_files() if path.stat().st_size > 1000][:20]
    monkeypatch.setattr(data, "builtin_corpus_files", lambda: subset)
    corpus = tokenize_corpus(
        spec=DataSpec(paths=()), tokenizer=tiny_tokenizer, cache_dir=tmp_path, progress=True
    )
    assert corpus.description.startswith(
        "built-in corpus: 20 Python standard-library files (offline default); 1 of 20"
    )
    assert corpus.num_documents == (19, 1) and len(corpus.train) > 20_000
    assert "<s>" + subset[0].read_text() in decode(corpus.train, corpus.validation)


# ---- packing and batches ------------------------------------------------------------------------


def test_packing_drops_the_remainder() -> None:
    samples = PackedSequences(np.arange(11, dtype=np.uint16), seq_len=3)
    assert len(samples) == 3
    assert [samples[i].tolist() for i in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert samples[-1].tolist() == [6, 7, 8] and samples[0].dtype == torch.int64
    with pytest.raises(IndexError):
        samples[3]


def _samples(count: int, seq_len: int = 4) -> PackedSequences:
    return PackedSequences(np.arange(count * seq_len, dtype=np.uint32), seq_len=seq_len)


def _batches(samples: PackedSequences, count: int, **kwargs: int) -> torch.Tensor:
    """The first `count` batches of `batch_iterator(samples, **kwargs)`, stacked."""
    iterator = batch_iterator(samples, **kwargs)
    return torch.stack([next(iterator) for _ in range(count)])


def test_batches_are_seeded_epoch_permutations() -> None:
    samples = _samples(10)
    first = _batches(samples, 4, batch_size=5, seed=3)
    assert first.shape == (4, 5, 4) and first.dtype == torch.int64
    assert first.equal(_batches(samples, 4, batch_size=5, seed=3))
    assert not first.equal(_batches(samples, 4, batch_size=5, seed=4))
    for epoch in (first[:2], first[2:]):  # each epoch shows every sample once, reshuffled
        assert sorted(epoch[:, :, 0].flatten().div(4).tolist()) == list(range(10))
    assert not first[:2].equal(first[2:])


@pytest.mark.parametrize("start_step", [0, 1, 2, 3, 5, 9])
def test_resume_matches_an_uninterrupted_run(start_step: int) -> None:
    samples = _samples(7)  # batch 3 over 7 samples: batches straddle epoch boundaries
    fresh = _batches(samples, start_step + 6, batch_size=3, seed=11)
    resumed = _batches(samples, 6, batch_size=3, seed=11, start_step=start_step)
    assert resumed.equal(fresh[start_step:])


def test_resume_far_ahead_reads_only_its_batch() -> None:
    reads = []

    class CountingSamples(PackedSequences):
        def __getitem__(self, index: int) -> torch.Tensor:
            reads.append(index)
            return super().__getitem__(index)

    start = time.perf_counter()
    samples = CountingSamples(np.arange(700), seq_len=7)
    _batches(samples, 1, batch_size=3, seed=0, start_step=10**12)
    assert len(reads) == 3 and time.perf_counter() - start < 0.5


@pytest.mark.parametrize("start_step", [0, 4])
def test_ranks_split_the_global_batch(start_step: int) -> None:
    samples = _samples(9)
    whole = _batches(samples, 5, batch_size=4, seed=1, start_step=start_step)
    ranks = [
        _batches(samples, 5, batch_size=2, seed=1, start_step=start_step, rank=r, world_size=2)
        for r in (0, 1)
    ]
    assert torch.cat(ranks, dim=1).equal(whole)


# ---- bad input ----------------------------------------------------------------------------------


def test_missing_path(tokenize, tmp_path: Path) -> None:
    with pytest.raises(LhConvertError, match=r"data path .*nothing.txt does not exist; pass"):
        tokenize(tmp_path / "nothing.txt")


def test_unsupported_file_type_names_the_supported(tokenize, tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text\nhello\n")
    with pytest.raises(
        LhConvertError, match=r"unsupported type \.csv; pass \.txt, \.jsonl, \.parq"
    ):
        tokenize(tmp_path / "d.csv")
    with pytest.raises(LhConvertError, match=r"holds no \.txt, \.jsonl, \.parquet files"):
        tokenize(tmp_path)


def test_empty_data(tokenize, tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(" \n\n")
    _write_jsonl(tmp_path / "c.jsonl", [{"text": ""}])
    with pytest.raises(LhConvertError, match=r"holds no text: every document is empty"):
        tokenize(tmp_path)
    with pytest.raises(LhConvertError, match=r"holds no text"):
        tokenize(tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"body": "x", "id": 2}', r"d.jsonl:3 has no 'text' field \(found: body, id\)"),
        ('{"text": 5}', r"d.jsonl:3 field 'text' is a int, not a string"),
        ("{not json", r"d.jsonl:3 is not valid JSON"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tokenize, tmp_path, line: str, message: str) -> None:
    (tmp_path / "d.jsonl").write_text(f'{{"text": "a"}}\n\n{line}\n')
    with pytest.raises(LhConvertError, match=message):
        tokenize(tmp_path / "d.jsonl")


def test_not_utf8(tokenize, tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LhConvertError, match=r"latin.txt is not UTF-8 text \(byte 3\)"):
        tokenize(tmp_path / "latin.txt")


def test_data_shorter_than_one_sequence() -> None:
    with pytest.raises(
        LhConvertError,
        match=r"^the training data holds 1,000 tokens, fewer than one sequence of 4,096; "
        r"add data or lower --ctx$",
    ):
        PackedSequences(np.zeros(1000, np.uint16), seq_len=4096)
    with pytest.raises(LhConvertError, match=r"^the validation data holds 10 tokens, fewer than"):
        PackedSequences(np.zeros(10, np.uint16), seq_len=16, name="validation")


def test_tokenizer_without_eos(tokenize, tiny_tokenizer, tmp_path: Path) -> None:
    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    no_eos = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert no_eos.eos_token_id is None
    with pytest.raises(LhConvertError, match="the tokenizer has no EOS token"):
        tokenize(_text_folder(tmp_path / "corpus"), tokenizer=no_eos)


def test_single_document_that_cannot_be_split(tokenize, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(LhConvertError, match="leaves no training documents after the split"):
        tokenize(tmp_path / "x.txt")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DataSpec(validation_fraction=0.0), r"validation_fraction=0.0 is out of range"),
        (lambda: DataSpec(validation_fraction=1.0), r"validation_fraction=1.0 is out of range"),
        (lambda: DataSpec(text_field=" "), r"text_field is empty"),
        (lambda: PackedSequences(np.arange(4), seq_len=0), r"seq_len=0 is invalid"),
        (lambda: batch_iterator(_samples(4), batch_size=0, seed=0), "batch_size=0 is invalid"),
        (lambda: batch_iterator(_samples(4), batch_size=1, seed=0, start_step=-1), "start_step"),
        (
            lambda: batch_iterator(_samples(4), batch_size=1, seed=0, rank=2, world_size=2),
            "rank=2 is invalid for world_size=2",
        ),
    ],
    ids=["fraction-0", "fraction-1", "text-field", "seq-len", "batch", "step", "rank"],
)
def test_bad_arguments(make: Callable[[], object], message: str) -> None:
    with pytest.raises(LhConvertError, match=message):
        make()


# ---- token folders ------------------------------------------------------------------------------


def test_token_folder_round_trip_equals_tokenizing_the_sources(
    tokenize, tiny_tokenizer, tmp_path: Path
) -> None:
    folder = _text_folder(tmp_path / "corpus")
    direct = tokenize(folder, validation_fraction=0.2)
    saved = save_token_corpus(direct, out=tmp_path / "carried" / "tokens")
    shutil.rmtree(folder)  # the sources and the cache are not needed to read it back
    shutil.rmtree(direct.cache_path)
    read = tokenize(saved, cache=tmp_path / "other-cache")
    assert np.array_equal(read.train, direct.train) and read.train.dtype == np.uint16
    assert np.array_equal(read.validation, direct.validation)
    assert read.num_documents == direct.num_documents and read.cache_path == saved
    assert read.description == f"token folder {saved}: {direct.description}"
    assert not (tmp_path / "other-cache").exists()
    assert sorted(path.name for path in saved.parent.iterdir()) == ["tokens"]
    with pytest.raises(LhConvertError, match=r"tokens exists; pass a new folder"):
        save_token_corpus(read, out=saved)


def test_token_folder_feeds_the_eval_haystacks(tokenize, tiny_tokenizer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from lh_convert.evaluate import builders as eval_data

    monkeypatch.setattr(eval_data, "cache_dir", lambda: tmp_path / "eval-cache")
    folder = _text_folder(tmp_path / "corpus")
    saved = save_token_corpus(tokenize(folder, validation_fraction=0.2), out=tmp_path / "tokens")
    direct = eval_data.held_out_documents(tokenizer=tiny_tokenizer,
                                          data=DataSpec(paths=(str(folder),),
                                                        validation_fraction=0.2))
    assert eval_data.held_out_documents(tokenizer=tiny_tokenizer,
                                        data=DataSpec(paths=(str(saved),))) == direct
    assert len(direct) == 4


def test_token_folder_from_another_tokenizer_is_refused(
    tokenize, tiny_tokenizer, tmp_path: Path
) -> None:
    saved = save_token_corpus(tokenize(_text_folder(tmp_path / "corpus")), out=tmp_path / "tok")
    other_tokenizer = copy.deepcopy(tiny_tokenizer)
    other_tokenizer.add_tokens(["lorem ipsum"])
    message = (r"^token folder .*tok was tokenized with another tokenizer \(.*, fingerprint "
               r"[0-9a-f]{12}\) than this model's \(.*, fingerprint [0-9a-f]{12}\); tokenize "
               r"the data with this model's tokenizer, or pass the source files as --data$")
    with pytest.raises(LhConvertError, match=message) as raised:
        tokenize(saved, tokenizer=other_tokenizer)
    assert "\n" not in str(raised.value)  # the CLI prints it as one `error: ...` line


def test_token_folder_survives_another_serialization_but_not_other_ids(
    tokenize, tiny_tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = save_token_corpus(tokenize(_text_folder(tmp_path / "corpus")), out=tmp_path / "tok")
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["probe_text"].startswith("def f(x") and "document" in meta["probe_text"]
    monkeypatch.setattr(data, "_tokenizer_fingerprint", lambda tokenizer: "0" * 64)
    assert np.array_equal(tokenize(saved).train, np.fromfile(saved / "train.bin", np.uint16))
    meta["probe_ids"][3] += 1
    (saved / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LhConvertError, match="was tokenized with another tokenizer"):
        tokenize(saved)


def test_token_folder_must_be_complete_and_alone(tokenize, tmp_path: Path) -> None:
    folder = _text_folder(tmp_path / "corpus")
    saved = save_token_corpus(tokenize(folder), out=tmp_path / "tok")
    with pytest.raises(LhConvertError, match=r"pass it as the only --data$"):
        tokenize(saved, folder)
    with open(saved / "train.bin", "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(LhConvertError, match=r"token folder .*tok is incomplete"):
        tokenize(saved)
    meta = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(LhConvertError, match=r"is not a complete format-2 token corpus"):
        tokenize(saved)
