"""Checkpoints and run folders are verified before they are trusted: flipped bytes, NaN
weights and a state.json of the wrong types are refused in one line that names the file and
the previous checkpoint; a save never writes non-finite weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lh_convert.export.to_hf import export
from lh_convert.train.checkpoint import (
    TrainState,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lh_convert.train.data import DataSpec
from lh_convert.train.recipes import load_recipe
from lh_convert.train.stages import extend, recover
from lh_convert.util.checksums import CHECKSUMS_NAME, write_checksums
from lh_convert.util.errors import LhConvertError

@pytest.fixture(scope="module")
def trained(make_tiny_checkpoint, small_corpus: Path, write_tiny_recipe,
            tmp_path_factory) -> tuple[Path, Path]:
    """(run folder with checkpoints step-2 and step-4 of 6 stage-1 steps, its recipe)."""
    folder = tmp_path_factory.mktemp("trained")
    recipe_path = write_tiny_recipe(folder, make_tiny_checkpoint("llama"), steps=6)
    extend(recipe=load_recipe(str(recipe_path)), out=folder / "run",
           data=DataSpec(paths=(str(small_corpus),)), echo=print, progress=False, stop_after=4)
    assert [p.name for p in checkpoint_dirs(folder / "run")] == ["step-0000002", "step-0000004"]
    return folder / "run", recipe_path


@pytest.fixture
def run(trained, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy)
    return copy


def _flip_a_tensor_byte(file: Path) -> None:
    """Change one byte of tensor data; the file's size and header stay valid."""
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF
    file.write_bytes(bytes(data))


def test_every_checkpoint_and_run_folder_records_sha256(run: Path) -> None:
    for folder in [run, *checkpoint_dirs(run)]:
        recorded = json.loads((folder / CHECKSUMS_NAME).read_text())
        assert recorded["algorithm"] == "sha256"
        assert {"model.safetensors"} <= set(recorded["files"]) or \
            any(name.endswith(".safetensors") for name in recorded["files"])


def test_flipped_bytes_in_a_checkpoint_are_refused_on_resume_recover_and_export(
        run: Path, trained, small_corpus: Path, tmp_path: Path) -> None:
    _flip_a_tensor_byte(latest_checkpoint(run) / "model.safetensors")
    recipe = load_recipe(str(trained[1]))
    pattern = r"step-0000004/model\.safetensors does not match the sha256.*previous checkpoint " \
              r"\(step-0000002\)"
    with pytest.raises(LhConvertError, match=pattern):
        extend(recipe=recipe, out=run, data=DataSpec(paths=(str(small_corpus),)), echo=print,
               progress=False)
    with pytest.raises(LhConvertError, match=pattern):
        recover(run=run, steps=1, echo=print, progress=False)
    with pytest.raises(LhConvertError, match=r"model\.safetensors does not match the sha256"):
        export(run=run, out=tmp_path / "exported", verify=False)
    assert not (tmp_path / "exported").exists()


def test_flipped_bytes_in_the_converted_weights_are_refused(run: Path, tmp_path: Path) -> None:
    _flip_a_tensor_byte(run / "model.safetensors")
    with pytest.raises(LhConvertError, match=r"run/model\.safetensors does not match.*convert "
                                             r"again"):
        export(run=run, out=tmp_path / "exported", verify=False)


def test_nan_weights_in_a_checkpoint_are_refused_on_load(run: Path, tmp_path: Path) -> None:
    newest = latest_checkpoint(run)
    weights = load_file(str(newest / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first][0] = float("nan")
    save_file(weights, str(newest / "model.safetensors"))
    write_checksums(newest)  # a NaN that was written, not a corruption after the fact
    with pytest.raises(LhConvertError, match=rf"non-finite weights.*{first}.*step-0000002"):
        load_checkpoint(newest)
    with pytest.raises(LhConvertError, match="non-finite weights"):
        export(run=run, out=tmp_path / "exported", verify=False)


def test_a_save_never_writes_non_finite_weights(run: Path) -> None:
    loaded = load_checkpoint(latest_checkpoint(run))
    poisoned = {name: tensor.clone() for name, tensor in loaded.model_state.items()}
    next(iter(poisoned.values())).fill_(float("inf"))
    state = TrainState(**{**loaded.state.__dict__, "step": 6})
    with pytest.raises(LhConvertError, match=r"non-finite.*by step 6.*last good checkpoint: "
                                             r"step-0000004"):
        save_checkpoint(run, model_state=poisoned, optim_state=loaded.optim_state, state=state,
                        keep=3)
    assert latest_checkpoint(run).name == "step-0000004"


@pytest.mark.parametrize("field, value", [("step", "4"), ("stage", 1), ("tokens", 1.5)])
def test_state_json_with_wrong_types_is_one_line(run: Path, field: str, value) -> None:
    newest = latest_checkpoint(run)
    state = json.loads((newest / "state.json").read_text())
    state[field] = value
    (newest / "state.json").write_text(json.dumps(state))
    write_checksums(newest)
    with pytest.raises(LhConvertError, match=rf"state\.json field {field} is .*step-0000002"):
        load_checkpoint(newest)


def test_export_of_a_corrupted_run_is_one_line_on_the_cli(run: Path, tmp_path: Path,
                                                          assert_one_line_error) -> None:
    from click.testing import CliRunner

    from lh_convert.cli import main

    _flip_a_tensor_byte(latest_checkpoint(run) / "optimizer.safetensors")
    _flip_a_tensor_byte(latest_checkpoint(run) / "model.safetensors")
    result = CliRunner().invoke(main, ["export", "--run", str(run), "--out", str(tmp_path / "x")])
    assert_one_line_error(result, "step-0000004/model.safetensors does not match the sha256",
                          "use the previous checkpoint")
    result = CliRunner().invoke(main, ["recover", "--run", str(run), "--steps", "1"])
    assert_one_line_error(result, "does not match the sha256", "previous checkpoint (step-0000002)")


def test_a_damaged_recipe_record_is_one_line(run: Path) -> None:
    record = json.loads((run / "recipe.json").read_text())
    record["data"]["paths"] = 7
    record["data"]["bogus"] = 1
    (run / "recipe.json").write_text(json.dumps(record))
    with pytest.raises(LhConvertError, match=r"recipe\.json is damaged"):
        recover(run=run, steps=1, echo=print, progress=False)
