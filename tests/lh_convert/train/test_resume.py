"""Resume semantics: ``extend --out RUN`` alone resumes with the pinned recipe.json; a changed
setting is refused in one line unless ``--override`` (then logged); ``--set`` reaches every
recipe field, typed; Ctrl-C names the checkpoint kept and the command that resumes (the torchrun launch under
torchrun)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.train.data import DataSpec
from lh_convert.train.recipes import Recipe, load_recipe
from lh_convert.train.resume_settings import (apply_sets, changed_settings, check_resume,
                                              interrupted_line, resume_command)
from lh_convert.train.stages import extend, read_record
from lh_convert.util.errors import LhConvertError

@pytest.fixture
def recipe_file(write_tiny_recipe):
    """A tiny recipe file checkpointing every step."""
    return lambda folder, model, steps: write_tiny_recipe(
        folder, model, steps=steps, activation_checkpointing=False, checkpoint_every=1)


def test_set_types_any_field_like_a_recipe_file() -> None:
    base = Recipe(name="r", description="d", model="m", ctx=65536)
    changed = apply_sets(base, ("train.lr=1e-4", "train.compile=true", "lighthouse.topk=1024",
                                "train.schedule=linear", "ctx=128k",
                                "lighthouse.dense_layers=[0, -1]"))
    assert changed.train.lr == 1e-4 and isinstance(changed.train.lr, float)
    assert changed.train.compile is True and changed.train.schedule == "linear"
    assert changed.lighthouse.topk == 1024 and changed.lighthouse.dense_layers == (0, -1)
    assert changed.ctx == 131072
    assert set(changed_settings(base, changed)) == {
        "ctx", "lighthouse.dense_layers", "lighthouse.topk", "train.compile", "train.lr",
        "train.schedule"}
    assert changed_settings(base, apply_sets(base, ("train.cp=2",))) == {}  # cp changes no result
    for bad, fragment in (("train.lrr=1", "train.lr"), ("lr", "FIELD=VALUE"),
                          ("train.lr=fast", "must be a number"),
                          ("train.schedule=sometimes", "one of 'cosine'")):
        with pytest.raises(LhConvertError, match=fragment) as caught:
            apply_sets(base, (bad,))
        assert "\n" not in str(caught.value)


def test_resume_uses_the_pinned_recipe_and_refuses_changes(
        make_tiny_checkpoint, small_corpus: Path, recipe_file, tmp_path: Path,
        assert_one_line_error) -> None:
    recipe = recipe_file(tmp_path, make_tiny_checkpoint("llama"), 2)
    run = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(main, ["extend", "--recipe", str(recipe), "--data", str(small_corpus),
                                 "--out", str(run)])
    assert first.exit_code == 0, first.output
    pinned = (run / "recipe.json").read_text()

    alone = runner.invoke(main, ["extend", "--out", str(run)])  # no recipe, no data: pinned
    assert alone.exit_code == 0, alone.output
    assert "stage 1 already complete at step 2" in alone.output
    assert "built-in corpus" not in alone.output  # it resumes on the run's own data

    refused = runner.invoke(main, ["extend", "--out", str(run), "--lr", "1e-3"])
    assert_one_line_error(refused, "train.lr 0.003 -> 0.001", "--override",
                          f"lh-convert recover --run {run}")  # stage 1 is complete
    refused = runner.invoke(main, ["extend", "--out", str(run), "--set", "train.stage1_steps=3"])
    assert_one_line_error(refused, "train.stage1_steps 2 -> 3")
    assert (run / "recipe.json").read_text() == pinned  # nothing was rewritten

    allowed = runner.invoke(main, ["extend", "--out", str(run), "--set", "train.stage1_steps=3",
                                   "--override"])
    assert allowed.exit_code == 0, allowed.output
    assert "override at step 2: train.stage1_steps 2 -> 3" in allowed.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    overrides = [row for row in rows if row["kind"] == "override"]
    assert overrides == [{"kind": "override", "step": 2,
                          "changes": {"train.stage1_steps": {"from": 2, "to": 3}}}]
    assert [row["step"] for row in rows if row["kind"] == "train"] == [1, 2, 3]
    assert read_record(run)[0].train.stage1_steps == 3


def test_ctrl_c_names_the_checkpoint_and_the_resume_command(
        make_tiny_checkpoint, small_corpus: Path, recipe_file, tmp_path: Path,
        monkeypatch) -> None:
    from lh_convert.train import loss as loss_module

    recipe = load_recipe(str(recipe_file(tmp_path, make_tiny_checkpoint("llama"), 10)))
    real_forward = loss_module.CausalLMLoss.forward
    calls = {"n": 0}

    def interrupted(self, input_ids, late_fraction=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_forward(self, input_ids, late_fraction)

    monkeypatch.setattr(loss_module.CausalLMLoss, "forward", interrupted)
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # the one-process command
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        extend(recipe=recipe, out=tmp_path / "run", data=DataSpec(paths=(str(small_corpus),)),
               echo=said.append, progress=False)
    assert said[-1] == (f"interrupted: checkpoint step-0000002 saved (step 2, the last one "
                        f"finished); resume with `lh-convert extend --out {tmp_path / 'run'}`")


@pytest.mark.parametrize(("dense", "stage"), [(False, "extend --out"), (True, "recover --run")])
def test_resume_command_names_the_launch_that_ran(tmp_path: Path, monkeypatch, dense: bool,
                                                  stage: str) -> None:
    """One process: the plain command; under torchrun (WORLD_SIZE > 1) the torchrun launch in
    README's form, with as many processes per node as ran."""
    run = tmp_path / "run"
    for variable in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(variable, raising=False)
    assert resume_command(run, dense=dense) == f"lh-convert {stage} {run}"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resume_command(run, dense=dense) == f"lh-convert {stage} {run}"
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert resume_command(run, dense=dense) == (
        f"torchrun --nproc-per-node 4 -m lh_convert.cli -- {stage} {run}")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command(run, dense=dense) == (
        f"torchrun --nproc-per-node 4 -m lh_convert.cli -- {stage} {run}")


def test_ctrl_c_line_under_torchrun_names_torchrun(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert interrupted_line(tmp_path / "run", dense=False, step=0) == (
        f"interrupted: no checkpoint yet (a resume starts from the first step); resume with "
        f"`torchrun --nproc-per-node 2 -m lh_convert.cli -- extend --out {tmp_path / 'run'}`")


@pytest.mark.parametrize(("dense", "stage"), [(False, "extend --out"), (True, "recover --run")])
def test_a_refused_resume_names_the_launch_that_resumes(tmp_path: Path, monkeypatch, dense: bool,
                                                        stage: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    base = Recipe(name="r", description="d", model="m", ctx=65536)
    run = tmp_path / "run"
    with pytest.raises(LhConvertError) as caught:
        check_resume(base, apply_sets(base, ("train.lr=1e-4",)), out=run, dense=dense,
                     override=False)
    assert (f"resume with `torchrun --nproc-per-node 2 -m lh_convert.cli -- {stage} {run}` alone"
            in str(caught.value))
    assert check_resume(base, base, out=run, dense=dense, override=False) == {}
