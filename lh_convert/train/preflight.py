"""What ``extend`` checks before it converts, and the data a run is pinned to.

A conversion pins a run folder to its inputs, so the inputs are checked first: the data
exists and opens (parquet footers read), and the parallel layout fits the processes. Data
paths are stored resolved, and the data's fingerprint (the token cache's key: every source's
path, size and modification time, or a dataset's fingerprint, with the split and the
tokenizer) is recorded in ``RUN/data.json`` at the first step, so a resume from another
working directory, or on changed files, is refused instead of training on other data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..util.atomic import write_json_atomic
from ..util.errors import LhConvertError
from .context_parallel import check_context_parallel
from .data import DataSpec, TokenizedCorpus, named_token_folder
from .data_sources import looks_like_path, open_parquet, resolve_sources
from .recipes import Recipe

DATA_RECORD = "data.json"


def resolved_data(spec: DataSpec) -> DataSpec:
    """``spec`` with every local path absolute; hub dataset ids stay as typed."""
    paths = []
    for path in spec.paths:
        local = Path(path).expanduser()
        paths.append(str(local.resolve()) if local.exists() else path)
    return dataclasses.replace(spec, paths=tuple(paths))


def check_inputs(*, recipe: Recipe, data: DataSpec, world: int) -> None:
    """Raise now, before any conversion, if the data or the parallel layout cannot work.

    Local data must exist and every parquet file must open; hub datasets are checked when
    they are read, a token folder (``save_token_corpus``) when it is loaded. ``--cp`` must divide the ``world`` processes and fit the context.
    """
    local = tuple(path for path in data.paths if Path(path).exists() or looks_like_path(path))
    if local and named_token_folder(data) is None:
        sources, _ = resolve_sources(local)
        for source in sources:
            if source.kind == "parquet":
                names = open_parquet(source.path).schema_arrow.names
                if data.text_field not in names:
                    raise LhConvertError(f"{source.path} has no column {data.text_field!r} "
                                         f"(columns: {', '.join(names)}); pass the column "
                                         f"holding the text as the text field")
    cp = recipe.train.cp
    check_context_parallel(world=world, cp=cp, seq_len=recipe.ctx,
                           lighthouse=recipe.lighthouse.kernel if cp > 1 else None)


def pin_data(run_dir: Path, *, corpus: TokenizedCorpus, trained: bool) -> None:
    """Record the data's fingerprint; once the run has trained, refuse any other data."""
    path = Path(run_dir) / DATA_RECORD
    fingerprint = corpus.cache_path.name
    if trained and path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            before, what = str(recorded["fingerprint"]), str(recorded["description"])
        except (OSError, ValueError, KeyError, TypeError):
            raise LhConvertError(f"{path} is unreadable; restore it, or train a new --out"
                                 ) from None
        if before != fingerprint:
            raise LhConvertError(
                f"the data of {run_dir} changed since it trained (then: {what}): files were "
                f"added, removed or modified; restore them to resume, or use a new --out")
        return
    write_json_atomic(path, {"fingerprint": fingerprint, "description": corpus.description})
