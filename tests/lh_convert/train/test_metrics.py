"""The run's training log (lh_convert.train.metrics): a line cut short by a crash is skipped by every
reader, and a rewrite drops it."""

from __future__ import annotations

import json
from pathlib import Path

from lh_convert.train.metrics import METRICS, append_metrics, read_metrics, rewrite_metrics


def test_a_line_cut_short_is_skipped_and_a_rewrite_drops_it(tmp_path: Path) -> None:
    append_metrics(tmp_path, {"kind": "train", "step": 1, "loss": 2.0})
    append_metrics(tmp_path, {"kind": "eval", "step": 1, "val_loss": 2.5})
    with open(tmp_path / METRICS, "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "step": 2, "lo')  # killed mid-write
    records = read_metrics(tmp_path)
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("eval", 1)]

    rewrite_metrics(tmp_path, records[:1])
    lines = (tmp_path / METRICS).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"kind": "train", "step": 1, "loss": 2.0}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS]


def test_no_log_reads_as_empty(tmp_path: Path) -> None:
    assert read_metrics(tmp_path) == []
