"""Runs a user can trust and fix: one process per run folder, data pinned by its resolved
paths and fingerprint, inputs checked before converting, restarts of runs that never trained,
leftovers of killed processes cleaned, a full disk and a second Ctrl-C reported in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.train.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint
from lh_convert.train.data import DataSpec
from lh_convert.train.recipes import load_recipe
from lh_convert.train.stages import extend, read_record
from lh_convert.util.errors import LhConvertError
from lh_convert.util.run_lock import LOCK_NAME, run_lock


@pytest.fixture
def setup(make_tiny_checkpoint, write_tiny_recipe, small_corpus: Path, tmp_path: Path):
    """(recipe of 4 steps, the corpus copied into tmp_path/data, the run folder path)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_corpus, data)
    recipe = load_recipe(str(write_tiny_recipe(tmp_path, make_tiny_checkpoint("llama"))))
    return recipe, data, tmp_path / "run"


def _extend(recipe, run: Path, *paths: Path | str, **kwargs):
    return extend(recipe=recipe, out=run, data=DataSpec(paths=tuple(str(p) for p in paths)),
                  echo=print, progress=False, **kwargs)


def _fail_before_the_first_step(recipe, run: Path, tmp_path: Path) -> None:
    """An extend on data that holds no text: the run is converted, then fails before step 1."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    with pytest.raises(LhConvertError, match="holds no text"):
        _extend(recipe, run, empty)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lh_convert.util.run_lock import run_lock\n"
         f"with run_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_on_a_run_is_refused_in_one_line(setup, assert_one_line_error) -> None:
    recipe, data, run = setup
    _extend(recipe, run, data, stop_after=2)
    holder = _hold_lock(run)
    try:
        with pytest.raises(LhConvertError, match=rf"in use by another lh-convert process "
                                                 rf"\(pid {holder.pid}\)"):
            _extend(recipe, run, data)
        result = CliRunner().invoke(main, ["recover", "--run", str(run), "--steps", "1"])
        assert_one_line_error(result, "in use by another lh-convert process")
    finally:
        holder.kill()
        holder.wait()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]  # nothing written twice
    # The holder died (SIGKILL): its lock file, with its pid, is stale and the run resumes.
    assert (run / LOCK_NAME).read_text().strip() == str(holder.pid)
    assert _extend(recipe, run, data).final_step == 4


def test_lock_is_released_on_exit_and_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path):
            raise RuntimeError("boom")
    with run_lock(tmp_path):
        pass


def test_relative_data_is_stored_resolved_and_changed_data_is_refused(setup, monkeypatch,
                                                                      tmp_path: Path) -> None:
    recipe, data, run = setup
    monkeypatch.chdir(tmp_path)
    _extend(recipe, run, "data", stop_after=2)
    assert read_record(run)[1].paths == (str(data.resolve()),)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data").mkdir()  # another "data" folder, which the resume must not read
    monkeypatch.chdir(elsewhere)
    assert _extend(recipe, run, stop_after=1).final_step == 3
    (data / "extra.txt").write_text("a new document\n" * 50)
    with pytest.raises(LhConvertError, match="data of .* changed since it trained"):
        _extend(recipe, run)


def test_inputs_are_checked_before_converting(setup, tmp_path: Path) -> None:
    recipe, data, run = setup
    with pytest.raises(LhConvertError, match="does not exist"):
        _extend(recipe, run, tmp_path / "missing")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(LhConvertError, match="broken.parquet is not a readable parquet file"):
        _extend(recipe, run, tmp_path / "broken.parquet")
    with pytest.raises(LhConvertError, match="--cp 2 must be >= 1 and divide the 1 processes"):
        _extend(recipe.with_train(cp=2), run, data)
    assert not run.exists()  # nothing was converted: the corrected command just works


def test_extend_trains_from_a_token_folder(setup, tmp_path: Path) -> None:
    """A token folder (``save_token_corpus``: what the replication carries to the GPU machine)
    passes the pre-conversion input check and trains; broken by that check once (2026-12-03)."""
    from transformers import AutoTokenizer

    from lh_convert.train.data import save_token_corpus, tokenize_corpus

    recipe, data, run = setup
    corpus = tokenize_corpus(spec=DataSpec(paths=(str(data),)), progress=False,
                             tokenizer=AutoTokenizer.from_pretrained(recipe.model),
                             cache_dir=tmp_path / "cache")
    tokens = save_token_corpus(corpus, out=tmp_path / "tokens")
    assert _extend(recipe, run, tokens, stop_after=1).final_step == 1


@pytest.mark.parametrize("spec", ["corpus/train.jsonl", "./nowhere", "data.txt"])
def test_a_missing_path_is_not_tried_as_a_hub_dataset(setup, spec: str, monkeypatch) -> None:
    from lh_convert.train import data_sources

    monkeypatch.setattr(data_sources, "_hub_dataset_source",
                        lambda hub_id: pytest.fail(f"{hub_id} was tried on the hub"))
    recipe, _, run = setup
    with pytest.raises(LhConvertError, match="does not exist"):
        _extend(recipe, run, spec)


def test_a_run_that_never_trained_restarts_with_new_inputs(setup, tmp_path: Path) -> None:
    recipe, data, run = setup
    _fail_before_the_first_step(recipe, run, tmp_path)
    assert (run / "manifest.json").is_file() and latest_checkpoint(run) is None
    assert _extend(recipe, run, data).final_step == 4  # the fixed data is taken, not refused
    assert read_record(run)[1].paths == (str(data),)


def test_leftovers_of_killed_processes_are_cleaned_and_final_work_finished(
        setup, tmp_path: Path) -> None:
    recipe, data, run = setup
    recipe = recipe.with_train(keep_checkpoints=2)
    _extend(recipe, run, data)
    (run / "loss.png").unlink()  # killed before the plot ...
    extra = run / "checkpoints" / "step-0000001"  # ... and before the pruning
    import shutil

    shutil.copytree(run / "checkpoints" / "step-0000002", extra)
    stale = [run / "checkpoints" / ".step-0000006.tmp-0123abcd", run / ".run-part.tmp-89abcdef"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    (run / ".recipe.json.tmp-deadbeef").write_text("{")
    said: list[str] = []
    extend(recipe=recipe, out=run, data=DataSpec(paths=(str(data),)), echo=said.append,
           progress=False)
    assert said == ["stage 1 already complete at step 4; nothing to do"]
    assert not any(path.exists() for path in stale)
    assert not (run / ".recipe.json.tmp-deadbeef").exists()
    assert [p.name for p in checkpoint_dirs(run)] == ["step-0000002", "step-0000004"]
    assert (run / "loss.png").stat().st_size > 1000


def test_a_live_writers_staging_folder_is_kept(tmp_path: Path) -> None:
    from lh_convert.util.atomic import atomic_directory, remove_stale_staging

    with atomic_directory(tmp_path / "out") as staging:
        assert remove_stale_staging(tmp_path) == []  # its writer holds it
        assert staging.is_dir()
    os.mkdir(tmp_path / ".out2.tmp-00000000")
    assert remove_stale_staging(tmp_path) == [tmp_path / ".out2.tmp-00000000"]


def test_disk_full_while_checkpointing_is_one_line(setup, monkeypatch) -> None:
    from lh_convert.train import checkpoint as train_state

    recipe, data, run = setup
    real_save = train_state.save_file

    def full_disk(tensors, path, *args, **kwargs):
        if "step-0000004" in str(path):
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(train_state, "save_file", full_disk)
    with pytest.raises(LhConvertError, match=r"the disk holding .*/run/checkpoints is full: the "
                                             r"write needed about [\d.]+ MB, .* free now"):
        _extend(recipe, run, data)
    assert latest_checkpoint(run).name == "step-0000002"
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_disk_full_while_converting_is_one_line(make_tiny_checkpoint, tmp_path: Path,
                                                monkeypatch, assert_one_line_error) -> None:
    import transformers

    source = make_tiny_checkpoint("llama")
    out = tmp_path / "runs"
    out.mkdir()

    def full_disk(self, folder, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk)
    result = CliRunner().invoke(main, ["convert", "--model", str(source),
                                       "--ctx", "1k", "--out", str(out / "run"), "--levels",
                                       "2", "--pooling", "2", "--topk", "16", "--tile", "8"])
    assert_one_line_error(result, f"the disk holding {out} is full")
    assert list(out.iterdir()) == []


def test_a_second_ctrl_c_during_the_save_waits_for_the_checkpoint(setup,
                                                                  monkeypatch) -> None:
    from lh_convert.train import checkpoint as train_state
    from lh_convert.train import loss as loss_module

    recipe, data, run = setup
    real_forward, real_save = loss_module.CausalLMLoss.forward, train_state.save_file
    calls = {"n": 0}

    def interrupted(self, input_ids, late_fraction=None):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_forward(self, input_ids, late_fraction)

    def impatient_save(tensors, path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C again mid-save
        time.sleep(0.05)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(loss_module.CausalLMLoss, "forward", interrupted)
    monkeypatch.setattr(train_state, "save_file", impatient_save)
    with pytest.raises(KeyboardInterrupt):
        _extend(recipe.with_train(checkpoint_every=100), run, data)
    assert load_checkpoint(latest_checkpoint(run)).state.step == 3


def test_a_mismatch_on_a_run_that_never_trained_says_how_to_start_over(
        setup, make_tiny_checkpoint, tmp_path: Path) -> None:
    import dataclasses

    recipe, data, run = setup
    _fail_before_the_first_step(recipe, run, tmp_path)
    other = dataclasses.replace(recipe, model=str(make_tiny_checkpoint("qwen2")))
    with pytest.raises(LhConvertError, match=rf"never completed a step, so delete it "
                                             rf"\(rm -r {run}\) and run again"):
        _extend(other, run, data)


def test_a_killed_conversions_staging_folder_is_removed_by_the_next(
        make_tiny_checkpoint, tmp_path: Path) -> None:
    from lh_convert.convert.settings import LighthouseSettings
    from lh_convert.convert.surgery import convert

    leftover = tmp_path / ".run.tmp-0badc0de"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"x" * 100)
    convert(model=str(make_tiny_checkpoint("llama")), ctx=1024, out=tmp_path / "run",
            settings=LighthouseSettings(levels=2, pooling=2, topk=16, tile=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_disk_full_while_exporting_is_one_line(setup, tmp_path: Path, monkeypatch) -> None:
    import transformers

    from lh_convert.export.to_hf import export

    recipe, data, run = setup
    _extend(recipe, run, data, stop_after=2)
    real_save = transformers.PreTrainedModel.save_pretrained

    def full_disk(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk)
    with pytest.raises(LhConvertError, match=rf"the disk holding {tmp_path / 'exports'} is full: "
                                             rf"the write needed about [\d.]+ [KM]B"):
        export(run=run, out=tmp_path / "exports" / "plain", verify=False)
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_run_folder_that_cannot_be_locked_is_one_line(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).mkdir()  # in the way of the lock file, as a read-only folder would be
    with pytest.raises(LhConvertError, match="cannot lock the run folder"):
        with run_lock(tmp_path):
            pass


def test_a_restart_takes_changed_settings_without_override(setup, tmp_path: Path) -> None:
    """A run that failed before its first step is pinned to nothing: a fixed recipe value is
    taken as it is (no --override), while a trained run still refuses it."""
    recipe, data, run = setup
    _fail_before_the_first_step(recipe, run, tmp_path)
    fixed = recipe.with_train(lr=1e-3)
    assert _extend(fixed, run, data, stop_after=2).final_step == 2
    assert read_record(run)[0].train.lr == 1e-3
    with pytest.raises(LhConvertError, match="pinned to its recipe.json") as caught:
        _extend(recipe.with_train(lr=2e-3), run, data)
    assert f"resume with `lh-convert extend --out {run}` alone" in str(caught.value)  # in stage 1
