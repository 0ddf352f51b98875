"""Small truths a newcomer meets: the demo replaces its own earlier folder and ends on
validation losses; help texts name what exists and say how long; aliases line up; the cache
variable is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.demo import DEMO_MARKER, prepare_workdir, validation_summary
from lh_convert.util.errors import LhConvertError
from lh_convert.util.paths import CACHE_VARIABLE

REPO = Path(__file__).resolve().parents[2]


def test_an_earlier_demo_folder_is_replaced_and_any_other_refused(tmp_path: Path) -> None:
    said: list[str] = []
    demo = tmp_path / "lh-demo"
    prepare_workdir(demo, said.append)
    assert (demo / DEMO_MARKER).is_file() and said == []
    (demo / "tiny-run").mkdir()
    (demo / "tiny-run" / "old.txt").write_text("old")
    prepare_workdir(demo, said.append)  # the second run of the README's command
    assert said == [f"replacing the earlier demo in {demo}"]
    assert sorted(p.name for p in demo.iterdir()) == [DEMO_MARKER]
    legacy = tmp_path / "legacy"  # made before the marker existed: only the demo's parts
    (legacy / "real-run").mkdir(parents=True)
    prepare_workdir(legacy, said.append)
    assert not (legacy / "real-run").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(LhConvertError, match="not a demo folder") as caught:
        prepare_workdir(mine, said.append)
    assert "\n" not in str(caught.value) and (mine / "thesis.tex").read_text() == "keep me"


def test_the_demo_closes_on_validation_losses(tmp_path: Path) -> None:
    rows = [{"kind": "train", "stage": "lighthouse", "step": 24, "loss": 1.0},
            {"kind": "eval", "stage": "lighthouse", "step": 16, "val_loss": 6.0},
            {"kind": "eval", "stage": "lighthouse", "step": 24, "val_loss": 5.5},
            {"kind": "eval", "stage": "dense", "step": 24, "val_loss": 7.25},
            {"kind": "train", "stage": "dense", "step": 34, "loss": 9.0},
            {"kind": "eval", "stage": "dense", "step": 34, "val_loss": 5.125}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validation_summary(tmp_path) == (
        "validation loss 5.500 at the end of stage 1 (Lighthouse), 7.250 with the same weights "
        "under dense attention, 5.125 after recovery")


def test_help_names_what_exists_and_says_how_long() -> None:
    runner = CliRunner()
    bench = runner.invoke(main, ["bench", "--help"]).output
    for named in re.findall(r"[\w/]+\.md", bench):
        assert (REPO / named).is_file(), named
    assert "docs/benchmarks.md" in bench
    demo = " ".join(runner.invoke(main, ["demo", "--help"]).output.split())
    assert "as far as it exists" not in demo
    assert "about 8 minutes on an idle 2-core CPU, 11 on a busy one" in demo
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "About 8 minutes on an idle 2-core CPU, 11 on a busy one" in readme
    assert "A few minutes" not in readme


def test_aliases_columns_line_up() -> None:
    from lh_convert.convert.sources import load_aliases

    lines = CliRunner().invoke(main, ["aliases"]).output.splitlines()
    aliases = sorted(load_aliases().items())
    assert len(lines) == len(aliases) > 5
    starts = {line.index(entry["description"]) for line, (_, entry) in zip(lines, aliases)}
    assert len(starts) == 1, lines  # every description starts in the same column


def test_the_cache_variable_is_documented() -> None:
    assert f"`${CACHE_VARIABLE}`" in (REPO / "README.md").read_text()
