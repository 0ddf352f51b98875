"""Run-directory I/O: atomic folders and JSON files, header-only safetensors and GGUF checks."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lh_convert.checkpoint import (
    SAFETENSORS_INDEX_NAME,
    atomic_directory,
    read_gguf_summary,
    unloaded_gguf_tensors,
    verify_safetensors_dir,
    write_json_atomic,
    write_text_atomic,
)
from lh_convert.errors import LhConvertError


def _entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- atomic_directory ----------------------------------------------------------------------------


def test_atomic_directory_builds_next_to_final_and_moves_into_place(tmp_path: Path) -> None:
    final = tmp_path / "run"
    with atomic_directory(final) as work:
        assert work.parent == final.parent
        assert work.name.startswith(".run.tmp-")
        assert not final.exists()
        (work / "weights.txt").write_text("done")
    assert (final / "weights.txt").read_text() == "done"
    assert _entries(tmp_path) == ["run"]
    assert final.stat().st_mode & 0o777 == 0o777 & ~_current_umask()  # not mkdtemp's 0700


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["exception", "ctrl-c"]
)
def test_atomic_directory_leaves_nothing_behind_on_failure(
    tmp_path: Path, error: BaseException
) -> None:
    final = tmp_path / "run"
    with pytest.raises(type(error)):
        with atomic_directory(final) as work:
            (work / "half-written.bin").write_bytes(b"\0" * 1000)
            (work / "sub").mkdir()
            raise error
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("existing", ["folder", "empty-folder", "file"])
def test_atomic_directory_refuses_an_existing_output(tmp_path: Path, existing: str) -> None:
    final = tmp_path / "run"
    if existing == "file":
        final.write_text("keep me")
    else:
        final.mkdir()
        if existing == "folder":
            (final / "old.txt").write_text("keep me")
    with pytest.raises(
        LhConvertError,
        match=r"output folder .*run already exists; choose another --out or delete it",
    ):
        with atomic_directory(final):
            pytest.fail("the block must not run")
    assert _entries(tmp_path) == ["run"]


def test_atomic_directory_never_replaces_an_output_that_appears_meanwhile(tmp_path: Path) -> None:
    final = tmp_path / "run"
    with pytest.raises(LhConvertError, match="already exists"):
        with atomic_directory(final) as work:
            (work / "new.txt").write_text("new")
            final.mkdir()
            (final / "other.txt").write_text("someone else's")
    assert _entries(tmp_path) == ["run"]
    assert _entries(final) == ["other.txt"]


def test_atomic_directory_creates_missing_parents(tmp_path: Path) -> None:
    final = tmp_path / "runs" / "2024" / "run"
    with atomic_directory(final) as work:
        (work / "a").write_text("a")
    assert (final / "a").is_file()


def test_atomic_directory_under_a_regular_file_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(
        LhConvertError, match=rf"{blocker} is a file, not a folder.*choose another --out"
    ):
        with atomic_directory(blocker / "deeper" / "run"):
            pytest.fail("the block must not run")
    assert _entries(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("parent", ["/sys", "/proc"])
def test_atomic_directory_in_an_unwritable_parent(parent: str) -> None:
    # Tests run as root, whom chmod does not stop; /sys and /proc refuse new folders even to root.
    if not Path(parent).is_dir():
        pytest.fail(f"{parent} is missing; this test needs Linux")
    with pytest.raises(
        LhConvertError,
        match=rf"output folder's parent {parent} is not writable \(.+\); choose another --out",
    ):
        with atomic_directory(Path(parent) / "lh-convert-run"):
            pytest.fail("the block must not run")


# ---- write_json_atomic ---------------------------------------------------------------------------


def test_write_json_atomic_writes_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    write_json_atomic(target, {"step": 1})
    write_json_atomic(target, {"step": 2, "items": [1, 2]})
    assert json.loads(target.read_text()) == {"step": 2, "items": [1, 2]}
    assert _entries(tmp_path) == ["meta.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def test_write_json_atomic_keeps_the_old_file_when_serialization_fails(tmp_path: Path) -> None:
    target = tmp_path / "meta.json"
    write_json_atomic(target, {"step": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"step": object()})
    assert json.loads(target.read_text()) == {"step": 1}
    assert _entries(tmp_path) == ["meta.json"]


def test_write_text_atomic_keeps_the_old_file_when_the_write_fails(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A failure after the bytes are written (here fsync: a full or failing disk) leaves the old
    file whole and no temporary sibling: the metrics log and the eval results go through this."""
    import lh_convert.checkpoint as checkpoint

    target = tmp_path / "metrics.jsonl"
    write_text_atomic(target, "old\n")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert _entries(tmp_path) == ["metrics.jsonl"]


# ---- verify_safetensors_dir ----------------------------------------------------------------------


def test_verify_accepts_single_file_and_sharded_checkpoints(
    make_tiny_checkpoint, tmp_path: Path
) -> None:
    folder = make_tiny_checkpoint("llama")
    verify_safetensors_dir(folder)
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / SAFETENSORS_INDEX_NAME).is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    verify_safetensors_dir(sharded)


def test_verify_detects_a_file_cut_in_half(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        LhConvertError,
        match=rf"checkpoint file {weights} is truncated or corrupt \(.*\); re-download it",
    ):
        verify_safetensors_dir(folder)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x05\x00",
        struct.pack("<Q", 10**12) + b"{}",
        struct.pack("<Q", 8) + b"not json",
        struct.pack("<Q", 2) + b"[]",
    ],
    ids=["empty", "short", "huge-header-length", "bad-json", "not-an-object"],
)
def test_verify_detects_corrupt_headers(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(LhConvertError, match="is truncated or corrupt"):
        verify_safetensors_dir(tmp_path)


def test_verify_detects_trailing_garbage(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    with open(folder / "model.safetensors", "ab") as handle:
        handle.write(b"extra")
    with pytest.raises(LhConvertError, match="the header describes"):
        verify_safetensors_dir(folder)


def test_verify_detects_index_naming_a_missing_shard(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    index = {
        "metadata": {},
        "weight_map": {
            "model.norm.weight": "model.safetensors",
            "lm_head.weight": "model-2.safetensors",
        },
    }
    (folder / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(
        LhConvertError, match="lists shards that are not in .*: model-2.safetensors"
    ):
        verify_safetensors_dir(folder)


def test_verify_requires_safetensors(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(
        LhConvertError,
        match=r"no \*.safetensors files in .*pickled \*.bin checkpoints are not loaded",
    ):
        verify_safetensors_dir(tmp_path)


# ---- GGUF headers --------------------------------------------------------------------------------


def test_gguf_summary_and_unloaded_tensors(make_tiny_checkpoint, make_tiny_gguf) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    extra = {"rope_freqs.weight": np.ones(8, np.float32)}
    summary = read_gguf_summary(make_tiny_gguf(folder, extra_tensors=extra))
    assert summary.architecture == "llama"
    assert {"token_embd.weight", "blk.1.attn_q.weight", "rope_freqs.weight"} <= set(
        summary.tensor_names
    )
    model_keys = set(load_file(folder / "model.safetensors"))
    skipped = unloaded_gguf_tensors(summary, model_keys=model_keys, num_layers=2)
    assert skipped == ["rope_freqs.weight"]


@pytest.mark.parametrize("keep", [0.5, 0.05], ids=["half", "header-only"])
def test_gguf_truncated(make_tiny_checkpoint, make_tiny_gguf, keep: float) -> None:
    gguf_file = make_tiny_gguf(make_tiny_checkpoint("llama", num_hidden_layers=2))
    gguf_file.write_bytes(gguf_file.read_bytes()[: int(gguf_file.stat().st_size * keep)])
    with pytest.raises(
        LhConvertError, match=rf"checkpoint file {gguf_file} is truncated or corrupt"
    ):
        read_gguf_summary(gguf_file)


def test_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(LhConvertError, match="is truncated or corrupt"):
        read_gguf_summary(tmp_path / "model.gguf")
