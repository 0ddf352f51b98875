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


def expected_outcome(recipe: Recipe) -> str | None:
    """One line: how Lighthouse + recovery compared with dense training at equal training time
    in the measured study closest to this recipe (same init; among complete studies when there
    is one, the smallest gap), or None."""
    found = []
    for study in measured_studies():
        light, dense = study["arms"].get("lighthouse", {}), study["arms"].get("dense", {})
        if (study.get("init") == recipe.init and light.get("val_loss") is not None
                and light.get("dense_val_loss_at_same_wall_s") is not None):
            found.append((light["val_loss"] - light["dense_val_loss_at_same_wall_s"], study,
                          light, dense))
    if not found:
        return None
    complete = [item for item in found if is_complete(item[1])]
    gap, study, light, dense = min(complete or found, key=lambda item: item[0])
    where = "ahead of" if gap < 0 else "behind"
    return (f"measured ({study['model']} {'from scratch' if recipe.init == 'random' else 'converted'}"
            f", {study['context']:,} tokens, study {study['study']} of docs/conversion/summary.json"
            f"{'' if is_complete(study) else ', partial'}): Lighthouse + recovery "
            f"ended {abs(gap):.2f} nats {where} dense training at the same training time "
            f"({light['val_loss']:.3f} vs {light['dense_val_loss_at_same_wall_s']:.3f} after "
            f"{light['steps_s']:.0f}s of steps; dense's whole run {dense.get('steps_s', 0):.0f}s)")


def is_complete(study: dict) -> bool:
    """Every arm of the study ran its whole budget (a partial study's arms stopped early)."""
    steps = [arm.get("steps") for arm in study["arms"].values()]
    return (isinstance(study.get("steps"), int) and bool(steps)
            and all(count == study["steps"] for count in steps))


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
