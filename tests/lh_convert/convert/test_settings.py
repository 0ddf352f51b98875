"""Lighthouse settings as a run stores them: the scatter-back rule (SPEC §7) reaches the kernel
config from a recipe, the command line and a converted run; context parallelism refuses the
rules it cannot split."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.convert.manifest import read_manifest
from lh_convert.convert.settings import LighthouseSettings
from lh_convert.train.context_parallel import check_context_parallel
from lh_convert.train.recipes import parse_recipe
from lh_convert.util.errors import LhConvertError

BASE = {"name": "t", "description": "t", "model": "m", "ctx": "64k"}


@pytest.mark.parametrize("rule", ["sum", "mean", "finest"])
def test_a_recipe_chooses_the_rule(rule: str) -> None:
    recipe = parse_recipe({**BASE, "lighthouse": {"combine": rule}}, where="r.toml")
    assert recipe.lighthouse.combine == rule and recipe.lighthouse.kernel.combine == rule
    assert LighthouseSettings.from_dict(recipe.lighthouse.to_dict()) == recipe.lighthouse


def test_an_unknown_rule_is_refused_with_the_choices() -> None:
    with pytest.raises(LhConvertError, match="combine = 'avg' must be one of 'sum', 'mean', "
                                             "'finest'"):
        parse_recipe({**BASE, "lighthouse": {"combine": "avg"}}, where="r.toml")


def test_convert_records_the_rule(make_tiny_checkpoint, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "1k", "--out", str(run),
        "--levels", "2", "--pooling", "2", "--topk", "16", "--tile", "8", "--combine", "finest"])
    assert result.exit_code == 0, result.output
    assert read_manifest(run).lighthouse["combine"] == "finest"


def test_context_parallelism_runs_only_the_sum() -> None:
    mean = LighthouseSettings(levels=2, pooling=2, topk=32, tile=4, combine="mean").kernel
    with pytest.raises(LhConvertError, match="combine = 'mean' does not run under context"):
        check_context_parallel(world=2, cp=2, seq_len=1024, lighthouse=mean)
    check_context_parallel(world=2, cp=2, seq_len=1024,
                           lighthouse=LighthouseSettings(levels=2, pooling=2, topk=32, tile=4).kernel)
