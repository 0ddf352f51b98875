"""What the measurements so far say a recipe can expect, for ``plan`` and ``extend`` to print."""

from __future__ import annotations

from .recipes import TrainSettings

# Below this many recovery steps, `plan` and `extend` say what short recoveries have measured.
# The paper's loss took 1,000-1,500 dense steps to recover from the switch (SPEC.md section 5).
SHORT_RECOVERY_STEPS = 1000


def recovery_note(train: TrainSettings) -> str | None:
    """An advisory line for a Lighthouse stage 1 followed by a short recovery."""
    if train.recovery_steps >= SHORT_RECOVERY_STEPS:
        return None
    return (f"recovery has {train.recovery_steps} dense steps; the paper's loss took 1,000-1,500 "
            f"to recover, and SmolLM2-135M at 64K ended 0.23 nats above dense continued "
            f"training after 180 Lighthouse + 60 recovery steps, 0.11 after 132 + 108 "
            f"(docs/results.md): give recovery more steps (`recover --steps`) and compare with "
            f"a dense run")
