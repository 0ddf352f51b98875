"""What a resume may change: ``--set FIELD=VALUE`` overrides, the pinned recipe on resume, and
the record of an ``--override``.

A run's first ``extend`` pins its recipe to ``RUN_DIR/recipe.json``; ``lh-convert extend --out
RUN_DIR`` alone resumes with it. A resume that would change a setting is refused in one line
unless ``--override`` is given; then the change is written to the run's log (a ``kind:
"override"`` record in ``metrics.jsonl``) and to ``recipe.json``. Configuration only: no torch.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from ..util.errors import LhConvertError
from .metrics import append_metrics
from .recipes import Recipe, parse_recipe

# Fields a resume may change freely: names, and the split of a sequence over processes (it
# changes no result).
FREE_ON_RESUME = frozenset({"name", "description", "train.cp"})
OVERRIDE_KIND = "override"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _parse_value(raw: str) -> Any:
    """A TOML value (``1e-4``, ``true``, ``[0, 1]``, ``"cosine"``), or the bare text as a string."""
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_sets(recipe: Recipe, sets: tuple[str, ...]) -> Recipe:
    """``recipe`` with each ``TABLE.FIELD=VALUE`` (or ``FIELD=VALUE`` at the top) applied,
    typed and validated as a recipe file's field is."""
    if not sets:
        return recipe
    data = recipe.to_dict()
    for item in sets:
        key, sep, raw = item.partition("=")
        key = key.strip()
        table, dot, name = key.rpartition(".")
        target = data.get(table) if dot else data
        if not sep or not name or not isinstance(target, dict) or name not in target:
            known = ", ".join(sorted(k for k in _flatten(data) if k not in ("name", "description")))
            raise LhConvertError(f"--set {item!r}: expected FIELD=VALUE with a recipe field, e.g. "
                                 f"train.lr=1e-4; fields: {known}")
        target[name] = _parse_value(raw.strip())
    return parse_recipe(data, where="--set")


def changed_settings(old: Recipe, new: Recipe) -> dict[str, tuple[Any, Any]]:
    """``{field: (old, new)}`` for every recipe field a resume would change (but the free ones)."""
    before, after = _flatten(old.to_dict()), _flatten(new.to_dict())
    return {key: (before.get(key), after.get(key)) for key in sorted(set(before) | set(after))
            if key not in FREE_ON_RESUME and before.get(key) != after.get(key)}


def _shown(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resume(old: Recipe, new: Recipe, *, out: Path, dense: bool,
                 override: bool) -> dict[str, tuple[Any, Any]]:
    """The changes a resume of ``out`` would make; refused in one line unless ``override``.
    ``dense``: the run's newest checkpoint finished stage 1, so recovery resumes it."""
    changes = changed_settings(old, new)
    if changes and not override:
        raise LhConvertError(f"{out} is pinned to its recipe.json and this resume would change "
                             f"{_shown(changes)}; resume with "
                             f"`{resume_command(out, dense=dense)}` alone, or add --override "
                             f"to change it (logged in metrics.jsonl)")
    return changes


def record_override(run_dir: Path, changes: dict[str, tuple[Any, Any]], *, step: int) -> str:
    """Log an allowed change of settings in the run's ``metrics.jsonl``; returns the line said."""
    append_metrics(run_dir, {"kind": OVERRIDE_KIND, "step": step,
                             "changes": {key: {"from": old, "to": new}
                                         for key, (old, new) in changes.items()}})
    return f"override at step {step}: {_shown(changes)} (logged in metrics.jsonl and recipe.json)"


def resume_command(run_dir: Path, *, dense: bool) -> str:
    """The command that resumes the stage that was running in ``run_dir``: under ``torchrun``
    (``WORLD_SIZE`` > 1) the same launch, in README's form (``--`` before the subcommand, or
    torchrun reads ``--run`` as its own ``--run-path``). Processes per node: torchrun's
    ``LOCAL_WORLD_SIZE`` (the world size on one host)."""
    stage = f"recover --run {run_dir}" if dense else f"extend --out {run_dir}"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return f"torchrun --nproc-per-node {per_node} -m lh_convert.cli -- {stage}"
    return f"lh-convert {stage}"


def interrupted_line(run_dir: Path, *, dense: bool, step: int) -> str:
    """What Ctrl-C says after step ``step``: the checkpoint kept and the command that resumes."""
    from .checkpoint import latest_checkpoint  # torch: only a training process gets here

    newest = latest_checkpoint(run_dir)
    if newest is None:
        kept = "no checkpoint yet (a resume starts from the first step)"
    elif newest.name == f"step-{step:07d}":
        kept = f"checkpoint {newest.name} saved (step {step}, the last one finished)"
    else:
        kept = f"the newest checkpoint is {newest.name}"
    return f"interrupted: {kept}; resume with `{resume_command(run_dir, dense=dense)}`"
