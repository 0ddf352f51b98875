"""The options every command shares for what it prints: ``-q/--quiet`` and ``-v/--verbose``
(one setting, ``util.verbosity``, for lh-convert and the libraries it drives), accepted
before or after the command's name, and ``--report-to`` for the training stages."""

from __future__ import annotations

import click

from ..train.reporting import REPORT_TO
from ..util.verbosity import set_verbosity

REPORT_TO_OPTION = click.option(
    "--report-to", type=click.Choice(REPORT_TO), default="none",
    help="Also send the training log to TensorBoard (event files in RUN_DIR/tensorboard/) or "
         "Weights & Biases (offline unless WANDB_MODE=online; files in RUN_DIR/wandb/).")


def _count(key: str):
    def callback(ctx: click.Context, _param: click.Parameter, value: int) -> None:
        ctx.meta[key] = ctx.meta.get(key, 0) + int(value or 0)
        given = ctx.meta.get("lh_verbose", 0) or ctx.meta.get("lh_quiet", 0)
        set_verbosity(ctx.meta.get("lh_verbose", 0) - ctx.meta.get("lh_quiet", 0),
                      explicit=bool(given))
    return callback


def verbosity_options() -> list[click.Option]:
    return [
        click.Option(["-q", "--quiet"], count=True, expose_value=False, is_eager=True,
                     show_default=False,
                     callback=_count("lh_quiet"),
                     help="Print less: the libraries' errors only (transformers, lm-eval, "
                          "datasets)."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                     show_default=False,
                     callback=_count("lh_verbose"),
                     help="Print more: the libraries' info messages and progress bars "
                          "(-vv: debug)."),
    ]


def add_verbosity_options(command: click.Command) -> None:
    """Give ``command`` and every subcommand under it ``-q`` and ``-v``."""
    command.params.extend(verbosity_options())
    for sub in getattr(command, "commands", {}).values():
        add_verbosity_options(sub)
