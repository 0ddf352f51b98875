"""Atomic writes: folders, JSON and text files that appear whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lh_convert.util.atomic import (atomic_directory, bytes_of, write_json_atomic,
                                    write_text_atomic)
from lh_convert.util.errors import LhConvertError


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
    import lh_convert.util.atomic as atomic

    target = tmp_path / "metrics.jsonl"
    write_text_atomic(target, "old\n")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(LhConvertError, match=rf"the disk holding {tmp_path} is full: the write "
                                             r"needed about 4 bytes"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "old\n"
    assert _entries(tmp_path) == ["metrics.jsonl"]


def test_bytes_of_counts_every_element_at_its_dtype_size() -> None:
    import torch

    tensors = [torch.zeros(3, 4), torch.zeros(5, dtype=torch.bfloat16),
               torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)), torch.zeros(0)]
    assert bytes_of(tensors) == 3 * 4 * 4 + 5 * 2 + 2 * 8
    assert bytes_of([]) == 0
