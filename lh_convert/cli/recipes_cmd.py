"""``lh-convert recipes``: the named recipes with their descriptions, and ``recipes show NAME``,
which prints one's TOML to start a new recipe from."""

from __future__ import annotations

import textwrap

import click

from ..util.errors import LhConvertError
from .group import main


@main.group(invoke_without_command=True,
            epilog="Example: lh-convert recipes show tiny-cpu > my-recipe.toml")
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the named recipes (recipes/*.toml) with their model, context and description."""
    if ctx.invoked_subcommand is not None:
        return
    from ..train.recipes import available_recipes, load_recipe

    named = available_recipes()
    width = max(len(name) for name in named)
    for name in named:
        recipe = load_recipe(name)
        click.echo(f"{name:<{width}}  {recipe.model} at {recipe.ctx} tokens, "
                   f"{recipe.train.stage1_steps} Lighthouse steps")
        click.echo(textwrap.fill(recipe.description, width=96, initial_indent=" " * (width + 2),
                                 subsequent_indent=" " * (width + 2)))
    click.echo("Print one with `lh-convert recipes show NAME`; use it with "
               "`lh-convert extend --recipe NAME|FILE`.")


@recipes.command("show", epilog="Example: lh-convert recipes show smollm2-135m-64k")
@click.argument("name")
def show(name: str) -> None:
    """Print a recipe's TOML file as it ships (copy it to start a new recipe)."""
    from ..train.recipes import available_recipes

    named = available_recipes()
    if name not in named:
        raise LhConvertError(f"unknown recipe {name!r}; choose one of {', '.join(named)} "
                             f"(`lh-convert recipes` lists them)")
    click.echo(named[name].read_text(encoding="utf-8"), nl=False)
