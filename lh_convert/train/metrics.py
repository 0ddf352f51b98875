"""A run's training log, ``RUN_DIR/metrics.jsonl``: one JSON record a line, appended as training
goes (``kind`` "train" per step, "eval" per validation), read by the loss plot, the model card,
a resumed run and the experiments' reports; and the plot of it, ``RUN_DIR/loss.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..util.atomic import write_text_atomic
from ..util.figures import pyplot, save_figure
from .reporting import forward

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append ``record`` to the log, and send it to the ``--report-to`` reporters, if any."""
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    forward(run_dir, record)


def read_jsonl(path: Path, *, required: str | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a log file in file order ([] when it does not exist); a line cut
    short by a kill (or anything not an object, or one without the key ``required``) is
    skipped, so a log written by a process killed mid-line still reads."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and (required is None or required in record):
            records.append(record)
    return records


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run's records in file order (``read_jsonl``: a line cut by a crash is skipped, so a
    run killed mid-write still plots, resumes and exports)."""
    return read_jsonl(Path(run_dir) / METRICS, required="step")


def rewrite_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replace the log with `records`, atomically (a resumed run drops the steps it redoes)."""
    write_text_atomic(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in records))


def plot_run(run_dir: Path) -> Path | None:
    """Write ``RUN_DIR/loss.png``: training loss per step, validation loss and late-position
    loss, stage 1 and recovery in different colours, a dashed line at the switch."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        return None
    plt = pyplot()
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for stage, colour in (("lighthouse", "tab:blue"), ("dense", "tab:orange")):
        rows = [r for r in train if r["stage"] == stage]
        if rows:
            name = "stage 1: Lighthouse" if stage == "lighthouse" else "recovery: dense"
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=colour, lw=1,
                    label=f"train loss ({name})")
        rows = [r for r in evals if r["stage"] == stage]
        if rows:
            ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], "o--", color=colour,
                    ms=4, label=f"validation loss ({stage})")
            ax.plot([r["step"] for r in rows], [r["val_late_loss"] for r in rows], "s:",
                    color=colour, ms=4, label=f"validation, last quarter of positions ({stage})")
    switch = [r["step"] for r in train if r["stage"] == "dense"]
    if switch and any(r["stage"] == "lighthouse" for r in train):
        ax.axvline(min(switch) - 0.5, color="grey", ls="--", lw=1)
        ax.text(min(switch) - 0.5, ax.get_ylim()[1], " switch to dense", va="top", fontsize=8)
    ax.set(xlabel="optimizer step", ylabel="loss (nats/token)", title=f"{Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    target = Path(run_dir) / LOSS_PLOT
    save_figure(fig, target)
    return target
