"""What changes with the step: the learning rate (one schedule, or recovery re-warmed) and the
sparsifying ramp of stage 1 (top-k and Lighthouse layers), down to a training run's log."""

from __future__ import annotations

import dataclasses
import json
import math
import sysconfig
from pathlib import Path

import pytest

from lh_convert.convert.settings import LighthouseSettings
from lh_convert.train.data import DataSpec
from lh_convert.train.recipes import Recipe, TrainSettings, parse_recipe
from lh_convert.train.schedule import learning_rate, lighthouse_at
from lh_convert.train.stages import extend, recover
from lh_convert.util.errors import LhConvertError


def _recipe(**train: object) -> Recipe:
    return Recipe(name="t", description="t", model="m", ctx=65536,
                  train=TrainSettings(stage1_steps=100, recovery_fraction=0.5, lr=1e-3,
                                      warmup_steps=10, min_lr_ratio=0.1, **train))


def test_one_schedule_over_both_stages() -> None:
    recipe = _recipe()
    assert learning_rate(0, recipe=recipe) == pytest.approx(1e-4)
    assert learning_rate(9, recipe=recipe) == pytest.approx(1e-3)
    # cosine from step 10 to 150: half way at step 80
    assert learning_rate(80, recipe=recipe) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert learning_rate(150, recipe=recipe) == pytest.approx(1e-4)
    assert learning_rate(101, recipe=recipe) < 3.5e-4  # recovery runs in the schedule's tail


def test_recovery_rewarmed() -> None:
    recipe = _recipe(recovery_schedule="rewarm", recovery_warmup_steps=5, recovery_peak=0.5)
    assert learning_rate(99, recipe=recipe) == pytest.approx(1e-4, rel=3e-3)  # one step short
    assert learning_rate(99, recipe=_recipe()) > 3e-4  # of stage 1's floor; "continue" is not
    assert learning_rate(100, recipe=recipe) == pytest.approx(0.5e-3 / 5)
    assert learning_rate(104, recipe=recipe) == pytest.approx(0.5e-3)
    assert learning_rate(150, recipe=recipe) == pytest.approx(1e-4)
    # recovery step 27: 22 of the 45 decay steps after its 5 warmup steps, cosine to the floor
    middle = learning_rate(100 + 27, recipe=recipe)
    assert middle == pytest.approx(1e-4 + 0.5 * 4e-4 * (1 + math.cos(math.pi * 22 / 45)))


def test_the_ramp_reaches_the_recipe_settings() -> None:
    recipe = dataclasses.replace(_recipe(sparsify_steps=9, sparsify_from_topk=4096,
                                         sparsify_layers="deepest-first"),
                                 lighthouse=LighthouseSettings(topk=512))
    ramp = [lighthouse_at(step, recipe=recipe, num_layers=10) for step in range(12)]
    topks = [s.topk for s in ramp]
    assert topks[0] <= 4096 and topks[-1] == 512 and topks == sorted(topks, reverse=True)
    assert set(topks) <= {512, 1024, 2048, 4096}  # budgets valid at 64K: k/m divides 4096
    counts = [10 - len(s.dense_layer_set(10)) for s in ramp]
    assert counts[0] == 1 and counts[-1] == 6 and counts == sorted(counts)
    # dense_layers (0, 1, -2, -1) leave layers 2..7 to Lighthouse: the deepest, 7, comes first
    assert ramp[0].dense_layer_set(10) == frozenset(range(10)) - {7}
    assert ramp[9] == recipe.lighthouse and ramp[11] == recipe.lighthouse


@pytest.mark.parametrize("train, message", [
    ({"sparsify_steps": 5}, "sparsifies nothing"),
    ({"sparsify_steps": 500, "sparsify_layers": "deepest-first"}, "more than the 10 stage-1"),
    ({"sparsify_steps": 5, "sparsify_from_topk": 1000}, "sparsify_from_topk=1000"),
    ({"sparsify_steps": 5, "sparsify_from_topk": 1024}, "must exceed the target topk 2048"),
    ({"recovery_schedule": "again"}, "must be one of 'continue', 'rewarm'"),
    ({"recovery_warmup_steps": 50}, "more than the 4 recovery steps"),
])
def test_bad_levers_are_refused(train: dict, message: str) -> None:
    data = {"name": "t", "description": "t", "model": "m", "ctx": "64k",
            "train": {"stage1_steps": 10, **train}}
    with pytest.raises(LhConvertError, match=message):
        parse_recipe(data, where="r.toml")


RECIPE = """
name = "ramp"
description = "tiny, sparsifying"
model = "{model}"
ctx = "512"
[lighthouse]
levels = 2
pooling = 2
topk = 16
tile = 8
dense_layers = [0]
[train]
stage1_steps = 4
recovery_fraction = 0.5
warmup_steps = 1
precision = "fp32"
activation_checkpointing = false
loss_chunk = 128
eval_every = 100
eval_batches = 1
sparsify_steps = 3
sparsify_from_topk = 64
sparsify_layers = "shallowest-first"
recovery_schedule = "rewarm"
recovery_warmup_steps = 1
"""


def test_a_sparsifying_run_logs_its_ramp(make_tiny_checkpoint, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for file in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:12]:
        (corpus / f"{file.stem}.txt").write_text(file.read_text(encoding="utf-8"))
    path = tmp_path / "ramp.toml"
    path.write_text(RECIPE.format(model=make_tiny_checkpoint("llama")))
    from lh_convert.train.recipes import load_recipe

    recipe, run = load_recipe(str(path)), tmp_path / "run"
    extend(recipe=recipe, out=run, data=DataSpec(paths=(str(corpus),)), echo=print,
           progress=False)
    recover(run=run, steps=None, echo=print, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    # At 512 tokens (L=2, p=2, tile 8) the valid budgets are 8, 16, 32, 64, ...; the geometric
    # points of the ramp from 64 to 16 at 1/4, 2/4, 3/4 are 45.3, 32, 22.6.
    assert [r["topk"] for r in train[:4]] == [32, 32, 16, 16]
    assert [r["lighthouse_layers"] for r in train[:4]] == [1, 2, 3, 3]
    assert "topk" not in train[-1]  # recovery is dense: no ramp to log
    assert train[3]["lr"] < recipe.train.lr  # stage 1 decayed over its own steps ...
    assert train[4]["lr"] == pytest.approx(recipe.train.lr)  # ... and recovery re-warmed
