"""``--report-to tensorboard|wandb`` beside metrics.jsonl, a one-line error naming the package
when it is missing, and ``-q/-v`` on every command as one verbosity setting for the libraries."""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.train.reporting import forward, reporting
from lh_convert.util import verbosity

@pytest.fixture(autouse=True)
def _restore_verbosity(monkeypatch):
    for variable in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS",
                     "HF_DATASETS_DISABLE_PROGRESS_BARS", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    yield
    verbosity.set_verbosity(0, explicit=False)


def test_tensorboard_event_files_hold_the_logged_losses(make_tiny_checkpoint, write_tiny_recipe,
                                                        small_corpus: Path,
                                                        tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_tiny_recipe(tmp_path, make_tiny_checkpoint("llama"), steps=2,
                               activation_checkpointing=False, eval_every=2)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["extend", "--recipe", str(recipe), "--data",
                                       str(small_corpus), "--out", str(run),
                                       "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    train = [r for r in rows if r["kind"] == "train"]
    assert [s.step for s in events.Scalars("train/loss")] == [r["step"] for r in train] == [1, 2]
    assert [s.value for s in events.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in train], rel=1e-6)  # event files store float32
    assert [s.step for s in events.Scalars("eval/val_loss")] == [2]


def test_a_missing_package_is_one_line_before_any_work(tmp_path: Path, monkeypatch,
                                                       assert_one_line_error) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["extend", "--recipe", "tiny-cpu", "--out", str(run),
                                       "--report-to", "wandb"])
    assert_one_line_error(result, "--report-to wandb needs the wandb package",
                          "pip install wandb")
    assert not run.exists()


def test_wandb_runs_offline_with_the_recipe_and_each_step(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[str, object]] = []

    class Run:
        def log(self, values, step):
            calls.append(("log", (step, values)))

        def finish(self):
            calls.append(("finish", None))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    with reporting("wandb", tmp_path, {"name": "r"}):
        forward(tmp_path, {"kind": "train", "stage": "lighthouse", "step": 3, "loss": 2.5})
        forward(tmp_path, {"kind": "eval", "stage": "lighthouse", "step": 3, "val_loss": 2.0})
    forward(tmp_path, {"kind": "train", "step": 4, "loss": 1.0})  # closed: goes nowhere
    assert os.environ["WANDB_MODE"] == "offline"
    init_kwargs = calls[0][1]
    assert init_kwargs["config"] == {"name": "r"} and init_kwargs["dir"] == str(tmp_path.resolve())
    assert calls[1:] == [("log", (3, {"train/loss": 2.5})), ("log", (3, {"eval/val_loss": 2.0})),
                         ("finish", None)]


def _commands(command: click.Command):
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _commands(sub)


def test_every_command_takes_quiet_and_verbose() -> None:
    for command in _commands(main):
        names = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"-q", "-v"} <= names, command.name


def test_one_verbosity_setting_reaches_the_libraries() -> None:
    import transformers

    runner = CliRunner()
    assert runner.invoke(main, ["recipes"]).exit_code == 0  # the default
    assert not transformers.utils.logging.is_progress_bar_enabled()  # no "Loading weights" bars
    assert logging.getLogger("lm_eval").level == logging.WARNING
    assert runner.invoke(main, ["-q", "recipes"]).exit_code == 0
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
    assert logging.getLogger("lm_eval").level == logging.ERROR  # e.g. the max_seq_lengths hint
    assert transformers.utils.logging.get_verbosity() == logging.ERROR
    assert runner.invoke(main, ["recipes", "show", "tiny-cpu", "-v"]).exit_code == 0
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    assert transformers.utils.logging.is_progress_bar_enabled()
    assert logging.getLogger("lm_eval").level == logging.INFO
