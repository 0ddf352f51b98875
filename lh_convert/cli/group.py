"""The ``lh-convert`` command group: one-line errors, and the options several commands share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .. import __version__
from ..util.atomic import disk_full_error
from ..util.errors import LhConvertError
from .params import LAYERS


class _Group(click.Group):
    """Turns ``LhConvertError`` into ``error: <one line>`` and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LhConvertError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except OSError as error:  # a full disk anywhere (a log line, the token cache) is one line
            where = Path(error.filename).parent if error.filename else Path.cwd()
            full = disk_full_error(error, folder=where)
            if full is None:
                raise
            click.echo(f"error: {full}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was left behind", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "show_default": True})
@click.version_option(__version__, prog_name="lh-convert")
def main() -> None:
    """Take a pretrained Hugging Face LLM to long context with Lighthouse Attention.

    \b
    Example:
      lh-convert convert --model smollm2-135m-gguf --ctx 64k --out runs/smollm2-64k
      lh-convert export --run runs/smollm2-64k --out exported/smollm2-64k
    """


def echo_once(text: str) -> None:
    """Print on the first process only (under torchrun every rank runs the command)."""
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(text)


INIT_OPTION = click.option(
    "--init", type=click.Choice(["pretrained", "random"]), default=None,
    show_default="pretrained",
    help="pretrained: the source's weights (a conversion); random: its architecture and "
         "tokenizer with fresh weights, trained from scratch (needs no weight files).")

CP_OPTION = click.option(
    "--cp", type=int, default=None, show_default="the recipe's cp, 1",
    help="Context parallelism: processes that split one sequence (docs/context_parallel.md); "
         "under torchrun, world/cp data-parallel replicas.")


def lighthouse_options(function):
    """``--levels --pooling --topk --tile --dense-layers``: the Lighthouse settings."""
    for option in reversed([
        click.option("--levels", default=3, help="Pyramid levels L (>= 2)."),
        click.option("--pooling", default=4, help="Pooling factor p (a power of two)."),
        click.option("--topk", default=2048, help="Selection budget k (a multiple of --tile)."),
        click.option("--tile", default=128, help="Selection tile size m (a power of two, m/2 >= p)."),
        click.option("--dense-layers", type=LAYERS, default="0,1,-2,-1",
                     help="Layers that stay dense SDPA (negative counts from the end)."),
        click.option("--combine", type=click.Choice(["sum", "mean", "finest"]), default="sum",
                     help="Scatter-back rule (SPEC §7): sum (the paper's), mean of the "
                          "contributing entries, or the finest one only."),
    ]):
        function = option(function)
    return function
