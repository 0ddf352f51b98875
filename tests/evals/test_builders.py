"""The long-context data builders: the same seed gives the same bytes, every needle lies where
its row says, prompts land on their token targets, and prompts beyond the model's context are
counted as skipped rather than built. CPU, offline, a few seconds, on the 512-token tokenizer.
"""

from __future__ import annotations

import inspect
import shlex
import string
import textwrap
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from lh_convert.util.errors import LhConvertError
from lh_convert.evaluate.builders import (
    NIAH_INTRO,
    NIAH_QUESTION,
    PASSKEY_FILLER,
    PASSKEY_INTRO,
    PASSKEY_QUESTION,
    TASKS,
    EvalDataOptions,
    bucket_edges,
    build_niah,
    build_passkey,
    build_position_loss,
    build_task_data,
    options_from_metadata,
    read_meta,
)

LENGTHS = (512, 1024, 2048)
CONTEXT = 1024
DOCUMENTS = [inspect.getsource(module) for module in (textwrap, string, shlex)]


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer: PreTrainedTokenizerFast,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four text files: one is held out for validation, the haystack and loss-by-position text."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, text in zip(("a", "b", "c", "d"), DOCUMENTS + [inspect.getsource(inspect)[:20000]]):
        (folder / f"{name}.txt").write_text(text)
    return folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LH_CONVERT_CACHE", str(tmp_path / "cache"))


def _options(tokenizer_dir: Path, **overrides: object) -> EvalDataOptions:
    fields = {"tokenizer": str(tokenizer_dir), "max_length": CONTEXT, "lengths": LENGTHS,
              "samples": 2, **overrides}
    return EvalDataOptions(**fields)


def _retrieval_rows(task: str, tokenizer: PreTrainedTokenizerFast,
                    tokenizer_dir: Path) -> list[dict]:
    options = _options(tokenizer_dir)
    if task == "passkey":
        return build_passkey(tokenizer=tokenizer, options=options).rows
    return build_niah(tokenizer=tokenizer, haystack=DOCUMENTS, options=options,
                      needles=1 if task == "niah_single" else 4).rows


def _units(row: dict, task: str) -> list[str]:
    """The haystack's units (sentences or lines, needles included), read back from the text."""
    intro, question = ((PASSKEY_INTRO, PASSKEY_QUESTION) if task == "passkey"
                       else (NIAH_INTRO, NIAH_QUESTION.format(key="KEY")))
    haystack = row["context"][len(intro) + 1:]
    haystack = haystack[: haystack.rindex("\n")]
    if task == "passkey":
        return [piece + "." for piece in haystack.split(". ")]
    return haystack.split("\n")


def test_same_seed_gives_the_same_bytes(tokenizer_dir: Path, corpus: Path, tmp_path: Path) -> None:
    built = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        options = _options(tokenizer_dir, seed=seed, data=(str(corpus),))
        built[name] = {task: build_task_data(task=task, options=options, data_dir=tmp_path / name)
                       .read_bytes() for task in TASKS}
    assert built["first"] == built["again"]
    for task in ("passkey", "niah_single", "niah_multikey"):
        assert built["first"][task] != built["other"][task], task
    assert built["first"]["position_loss"] == built["other"]["position_loss"]  # no randomness


@pytest.mark.parametrize("task", ["passkey", "niah_single", "niah_multikey"])
def test_needles_lie_at_their_stated_depth(task: str, tiny_tokenizer: PreTrainedTokenizerFast,
                                           tokenizer_dir: Path) -> None:
    rows = _retrieval_rows(task, tiny_tokenizer, tokenizer_dir)
    assert {(row["length"], row["depth"]) for row in rows} == {
        (n, d) for n in LENGTHS if n <= CONTEXT for d in (0.0, 0.25, 0.5, 0.75, 1.0)}
    for row in rows:
        encoded = tiny_tokenizer(row["context"] + row["answer"], return_offsets_mapping=True)
        char = row["context"].index(row["needle"])
        token = next(i for i, (_, end) in enumerate(encoded["offset_mapping"]) if end > char)
        assert token == row["needle_token"]
        needle_tokens = len(tiny_tokenizer(row["needle"], add_special_tokens=False).input_ids)
        decoded = tiny_tokenizer.decode(encoded["input_ids"][token: token + needle_tokens + 1])
        assert decoded.strip().startswith(row["needle"][:24]), decoded
        assert row["answer"].strip() in row["needle"]
        start, end = row["haystack_tokens"]
        span = end - start - needle_tokens
        unit = max(len(tiny_tokenizer(u, add_special_tokens=False).input_ids)
                   for u in _units(row, task))
        depth = (token - start) / span
        assert abs(depth - row["depth"]) <= (unit + 2) / span, (row["depth"], depth, unit, span)


@pytest.mark.parametrize("task", ["niah_multikey"])
def test_distractors_have_other_keys(task: str, tiny_tokenizer: PreTrainedTokenizerFast,
                                     tokenizer_dir: Path) -> None:
    for row in _retrieval_rows(task, tiny_tokenizer, tokenizer_dir):
        asked = row["needle"].split(" for ")[1].split(" is ")[0]
        assert row["context"].endswith(NIAH_QUESTION.format(key=asked))
        assert len(row["distractors"]) == 3
        for distractor in row["distractors"]:
            assert distractor["key"] != asked
            assert f"for {distractor['key']} is {distractor['value']}." in row["context"]


@pytest.mark.parametrize("task", ["passkey", "niah_single", "niah_multikey"])
def test_prompts_land_on_their_token_targets(task: str, tiny_tokenizer: PreTrainedTokenizerFast,
                                             tokenizer_dir: Path) -> None:
    # The shortfall is at most the unit that did not fit: the longest sentence or line there is.
    units = PASSKEY_FILLER if task == "passkey" else [
        line for text in DOCUMENTS for line in text.splitlines() if line.strip()]
    unit = max(len(tiny_tokenizer(u, add_special_tokens=False).input_ids) for u in units)
    for row in _retrieval_rows(task, tiny_tokenizer, tokenizer_dir):
        tokens = len(tiny_tokenizer(row["context"] + row["answer"]).input_ids)
        assert tokens == row["num_tokens"]
        assert row["length"] - unit - 2 <= tokens <= row["length"], (row["length"], tokens, unit)


def test_prompts_beyond_the_context_are_counted_as_skipped(
        tiny_tokenizer: PreTrainedTokenizerFast, tokenizer_dir: Path, corpus: Path,
        tmp_path: Path) -> None:
    options = _options(tokenizer_dir, lengths=(512, 1024, 2048, 4096), data=(str(corpus),))
    built = build_passkey(tokenizer=tiny_tokenizer, options=options)
    assert built.skipped == {2048: 10, 4096: 10}
    assert {row["length"] for row in built.rows} == {512, 1024}
    assert max(row["num_tokens"] for row in built.rows) <= CONTEXT
    positions = build_position_loss(tokenizer=tiny_tokenizer, documents=DOCUMENTS, options=options)
    assert positions.skipped and min(positions.skipped) > CONTEXT
    assert max(row["end"] for row in positions.rows) <= CONTEXT
    for task in TASKS:
        build_task_data(task=task, options=options, data_dir=tmp_path)
        meta = read_meta(tmp_path / f"{task}.meta.json")
        assert meta["skipped"] and all(int(end) > CONTEXT for end in meta["skipped"]), task


def test_position_buckets_cut_where_the_tokenizer_agrees(
        tiny_tokenizer: PreTrainedTokenizerFast, tokenizer_dir: Path) -> None:
    options = _options(tokenizer_dir, documents=2)
    rows = build_position_loss(tokenizer=tiny_tokenizer, documents=DOCUMENTS, options=options).rows
    assert {row["document"] for row in rows} == {0, 2}  # textwrap and shlex: the longest two
    edges = bucket_edges(2048)
    assert {tuple(row["bucket"]) for row in rows} == set(zip(edges, edges[1:])) - {(1024, 2048)}
    for row in rows:
        assert not row["context"][-1].isspace()
        assert len(tiny_tokenizer(row["context"]).input_ids) == row["start"]
        whole = tiny_tokenizer(row["context"] + row["continuation"]).input_ids
        assert len(whole) == row["end"] and row["num_tokens"] == row["end"] - row["start"] > 0
        low, high = row["bucket"]
        assert low - 64 < row["start"] <= max(low, 2) and high - 64 < row["end"] <= high


def test_bucket_edges() -> None:
    assert bucket_edges(32768) == [0, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    assert bucket_edges(512) == [0, 32, 64, 128, 256, 512]
    assert bucket_edges(40) == [0, 40]


def test_a_length_too_short_for_the_prompt_is_an_error(
        tiny_tokenizer: PreTrainedTokenizerFast, tokenizer_dir: Path) -> None:
    with pytest.raises(LhConvertError, match="cannot hold the .*-token prompt"):
        build_passkey(tokenizer=tiny_tokenizer, options=_options(tokenizer_dir, lengths=(32,)))


def test_options_from_lm_eval_metadata(make_tiny_checkpoint, tmp_path: Path) -> None:
    model = make_tiny_checkpoint("llama", max_position_embeddings=768)
    options, data_dir = options_from_metadata({"pretrained": str(model), "lengths": [512, 1024],
                                               "version": 1.0})
    assert (options.max_length, options.lengths, options.seed) == (768, (512, 1024), 0)
    assert data_dir.parent.name == "evals"  # in the cache, named by the options' fingerprint
    options, data_dir = options_from_metadata({"tokenizer": str(model), "max_length": "4096",
                                               "data_dir": str(tmp_path)})
    assert options.max_length == 4096 and data_dir == tmp_path
    with pytest.raises(LhConvertError, match="need the model's tokenizer"):
        options_from_metadata({"lengths": [512]})
    with pytest.raises(LhConvertError, match="lengths"):
        options_from_metadata({"tokenizer": str(model), "lengths": [0]})
