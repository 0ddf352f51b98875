"""What the measurements so far say a recipe can expect, for ``plan`` and ``extend`` to print.

The numbers come from the conversion study's record, ``docs/conversion/summary.json`` (shipped
with the package), never from this file: a new study changes what is printed."""

from __future__ import annotations

import json

from ..util.paths import shipped_folder
from .recipes import Recipe

# Below this many recovery steps a short recovery is flagged: the paper's loss took 1,000-1,500
# dense steps to recover from the switch (SPEC.md section 5).
SHORT_RECOVERY_STEPS = 1000


def measured_studies() -> list[dict]:
    """The conversion study's recorded entries ([] when the record is missing or unreadable)."""
    path = shipped_folder("docs/conversion") / "summary.json"
    try:
        studies = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [s for s in studies if isinstance(s, dict) and isinstance(s.get("arms"), dict)]


# The recipe fields a study's record keeps (`settings`, written by the replication's report)
# and a recipe is matched on: the levers of issue #18.
LEVER_FIELDS = {"lighthouse": ("levels", "pooling", "topk", "tile", "dense_layers", "combine"),
                "train": ("lr", "min_lr_ratio", "recovery_schedule", "recovery_warmup_steps",
                          "recovery_peak", "sparsify_steps", "sparsify_from_topk",
                          "sparsify_layers")}


def lever_settings(recipe: Recipe) -> dict:
    """The recipe's values of ``LEVER_FIELDS``, as a study's record stores them."""
    tables = {"lighthouse": recipe.lighthouse, "train": recipe.train}
    return {table: {name: _plain(getattr(tables[table], name)) for name in names}
            for table, names in LEVER_FIELDS.items()}


def _plain(value: object) -> object:
    return sorted(value) if isinstance(value, (tuple, list)) else value


def _same_levers(study: dict, recipe: Recipe) -> bool:
    """The study recorded its Lighthouse arm's settings and they are this recipe's (the
    learning rate and warm-ups as shares of the budget are not compared: budgets differ)."""
    recorded, wanted = study.get("settings"), lever_settings(recipe)
    if not isinstance(recorded, dict):
        return False
    skip = {"lr", "recovery_warmup_steps", "sparsify_steps"}
    return all(_plain(recorded.get(table, {}).get(name)) == value
               for table, values in wanted.items() for name, value in values.items()
               if name not in skip) and \
        bool(recorded["train"].get("sparsify_steps")) == bool(recipe.train.sparsify_steps)


def expected_outcome(recipe: Recipe) -> str | None:
    """One line: how Lighthouse + recovery compared with dense training at equal training time
    in the measured study closest to this recipe (same init; the recipe's context where a study
    measured it, then the recipe's own Lighthouse settings where a study measured them; among
    complete studies when there is one, the smallest gap), or None."""
    found = []
    for study in measured_studies():
        light, dense = study["arms"].get("lighthouse", {}), study["arms"].get("dense", {})
        if (study.get("init") == recipe.init and light.get("val_loss") is not None
                and light.get("dense_val_loss_at_same_wall_s") is not None):
            found.append((light["val_loss"] - light["dense_val_loss_at_same_wall_s"], study,
                          light, dense))
    if not found:
        return None
    at_ctx = [item for item in found if item[1].get("context") == recipe.ctx]
    found = at_ctx or found
    same = [item for item in found if _same_levers(item[1], recipe)]
    pool = same or found
    complete = [item for item in pool if is_complete(item[1])]
    gap, study, light, dense = min(complete or pool, key=lambda item: item[0])
    where = "ahead of" if gap < 0 else "behind"
    which = "these Lighthouse settings" if same else "other Lighthouse settings than this recipe's"
    return (f"measured ({study['model']} {'from scratch' if recipe.init == 'random' else 'converted'}"
            f", {study['context']:,} tokens{'' if at_ctx else f' (this recipe: {recipe.ctx:,})'}"
            f", study {study['study']} of docs/conversion/summary.json"
            f"{'' if is_complete(study) else ', partial'}, {which}): Lighthouse + recovery "
            f"ended {abs(gap):.2f} nats {where} dense training at the same training time "
            f"({light['val_loss']:.3f} vs {light['dense_val_loss_at_same_wall_s']:.3f} after "
            f"{light.get('val_loss_at_steps_s', light['steps_s']):.0f}s of steps; dense's whole "
            f"run {dense.get('steps_s', 0):.0f}s)")


def is_complete(study: dict) -> bool:
    """Every arm of the study ran its whole budget and was validated at its end (a partial
    study's arms stopped early, or lost their last validation: `val_loss_at_steps_s`)."""
    steps = [arm.get("steps") for arm in study["arms"].values()]
    return (isinstance(study.get("steps"), int) and bool(steps)
            and all(count == study["steps"] for count in steps)
            and not any("val_loss_at_steps_s" in arm for arm in study["arms"].values()))


def recovery_note(recipe: Recipe) -> str | None:
    """Advice for a Lighthouse stage 1: the measured outcome, and a short recovery flagged."""
    lines = []
    if recipe.train.recovery_steps < SHORT_RECOVERY_STEPS:
        lines.append(f"recovery has {recipe.train.recovery_steps} dense steps; the paper's loss "
                     f"took 1,000-1,500 to recover from the switch: compare with a dense run")
    outcome = expected_outcome(recipe)
    if outcome:
        lines.append(outcome)
    return "; ".join(lines) or None
