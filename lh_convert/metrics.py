"""A run's training log, ``RUN_DIR/metrics.jsonl``: one JSON record a line, appended as training
goes (``kind`` "train" per step, "eval" per validation), read by the plots, the model card and
a resumed run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import write_text_atomic

METRICS = "metrics.jsonl"


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records in file order; a line cut short by a crash (or anything not a record) is
    skipped, so a run killed mid-write still plots, resumes and exports."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace the log with `records`, atomically (a resumed run drops the steps it redoes)."""
    write_text_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in records))
