"""The ``lh-convert`` command line: thin Click commands over the library functions.

``group`` holds the command group, its one-line error handling and the options several
commands share; ``params`` the parameter types that parse what people type ("64k") once, at
the edge; ``pipeline`` the commands of the pipeline (convert, extend, recover, plan, export,
eval), ``recipes_cmd`` the recipe listing and ``tools`` the rest (aliases, doctor, demo,
bench). Importing the command modules registers their commands on ``main``.
"""

from . import pipeline, recipes_cmd, tools
from .group import main
from .verbosity_opts import add_verbosity_options

add_verbosity_options(main)  # -q/-v on every command, before or after its name

__all__ = ["main", "pipeline", "recipes_cmd", "tools"]
