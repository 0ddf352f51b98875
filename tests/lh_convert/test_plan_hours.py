"""``plan`` speaks in hours (per stage and in all), says plainly when a run is not practical
on this device, and its CPU estimate is calibrated: on a tiny run, predicted over measured
seconds per step stays within bounds."""

from __future__ import annotations

import json
import dataclasses
from pathlib import Path

from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.plan import PRACTICAL_HOURS, plan_run, stage_seconds
from lh_convert.util.units import duration
from lh_convert.train.data import DataSpec
from lh_convert.train.recipes import load_recipe
from lh_convert.train.stages import extend


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (42, 600, 3 * 3600, 100 * 3600)] == [
        "42 s", "10 min", "3.0 h", "100 h (4 days)"]


def test_plan_gives_stage_totals_and_says_when_it_is_not_practical() -> None:
    big = CliRunner().invoke(main, ["plan", "--recipe", "smollm2-135m-64k"])
    assert big.exit_code == 0, big.output
    recipe = load_recipe("smollm2-135m-64k")
    planned = plan_run(recipe=recipe)
    stage1, recovery = stage_seconds(planned, recipe=recipe)
    assert stage1 == recipe.train.stage1_steps * planned.step_seconds_lighthouse
    assert f"stage 1: 600 steps, ~{duration(stage1)}; recovery: 198 steps" in big.output
    assert (stage1 + recovery) / 3600 > PRACTICAL_HOURS  # a 64K run of a 135M model on a CPU
    assert "NOT PRACTICAL on this device (CPU)" in big.output and "days" in big.output
    small = CliRunner().invoke(main, ["plan", "--recipe", "tiny-cpu"])
    assert "in all ~" in small.output and "NOT PRACTICAL" not in small.output


def test_the_cpu_estimate_matches_a_measured_tiny_run(tmp_path: Path) -> None:
    recipe = load_recipe("tiny-cpu").with_train(stage1_steps=8, eval_every=100,
                                                checkpoint_every=100)
    recipe = dataclasses.replace(recipe, name="tiny-cpu-timing")
    extend(recipe=recipe, out=tmp_path / "run", data=DataSpec(), echo=lambda line: None,
           progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    measured = min(r["step_s"] for r in rows if r["kind"] == "train" and r["step"] > 1)
    predicted = plan_run(recipe=recipe).step_seconds_lighthouse
    # Before the LM head was counted it predicted 0.38 s against 2-2.4 s measured on a quiet
    # 2-core machine (0.16-0.19); now 1.93 s. The fastest of 7 steps is taken, since a machine
    # shared with other work slows single steps (up to 4x seen); the bounds leave room for
    # that below and for a faster CPU above, and still fail the old estimate.
    assert 0.2 < predicted / measured < 2.5, (predicted, measured)
