"""``lh-convert recipes`` lists every named recipe with its description; ``recipes show NAME``
prints a TOML file that loads as the same recipe; recipes/README.md names every file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.train.recipes import available_recipes, load_recipe, recipes_dir


def test_recipes_lists_every_recipe_with_its_description() -> None:
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in available_recipes():
        recipe = load_recipe(name)
        row = next(line for line in lines if line.startswith(f"{name} "))
        assert f"{recipe.model} at {recipe.ctx} tokens" in row
        assert recipe.description.split()[0] in result.output
    assert len(available_recipes()) >= 5


def test_recipes_show_prints_a_file_that_loads_as_the_same_recipe(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["recipes", "show", "smollm2-135m-64k"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.output)["name"] == "smollm2-135m-64k"
    copy = tmp_path / "mine.toml"
    copy.write_text(result.output)
    assert load_recipe(str(copy)) == load_recipe("smollm2-135m-64k")


def test_recipes_show_unknown_is_one_line(assert_one_line_error) -> None:
    result = CliRunner().invoke(main, ["recipes", "show", "nope"])
    assert_one_line_error(result, "unknown recipe 'nope'", "tiny-cpu", "lh-convert recipes")


def test_the_recipes_readme_names_every_recipe_it_holds() -> None:
    readme = (recipes_dir() / "README.md").read_text(encoding="utf-8")
    for name in available_recipes():
        assert f"`{name}`" in readme
