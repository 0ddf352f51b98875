"""What an evaluation produced, per model: a leaf the runner fills and the report reads."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelResults:
    """One model's results.

    Attributes:
        label: the model's column name.
        source: the folder it was loaded from.
        max_length: its context in tokens; longer prompts were skipped.
        lm_eval: lm-eval's results (`simple_evaluate`'s output without per-sample logs).
        retrieval: task -> {(length, depth): accuracy}.
        position_loss: ((bucket start, bucket end), nats per token, documents) per bucket.
        skipped: task -> {length (or bucket end): rows skipped, longer than the context}.
    """

    label: str
    source: str
    max_length: int
    lm_eval: dict[str, Any]
    retrieval: dict[str, dict[tuple[int, float], float]] = field(default_factory=dict)
    position_loss: list[tuple[tuple[int, int], float, int]] = field(default_factory=list)
    skipped: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalReport:
    """What `run_eval` evaluated and the files it wrote."""

    models: list[ModelResults]
    files: list[Path]


def labels(sources: Sequence[Path]) -> list[str]:
    names = [Path(source).resolve().name or "model" for source in sources]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{names[0]} (model)", f"{names[1]} (baseline)"]
    return names


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"
