"""PNG plots of a run: loss curves of both stages on one figure, the switch marked."""

from __future__ import annotations

import json
import os
from pathlib import Path

LOSS_PLOT = "loss.png"


def _read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path) -> Path | None:
    """Write ``RUN_DIR/loss.png``: training loss per step, validation loss and late-position
    loss, stage 1 and recovery in different colours, a dashed line at the switch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        return None
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for stage, colour in (("lighthouse", "tab:blue"), ("dense", "tab:orange")):
        rows = [r for r in train if r["stage"] == stage]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], color=colour, lw=1,
                    label=f"train loss ({'stage 1: Lighthouse' if stage == 'lighthouse' else 'recovery: dense'})")
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
    temporary = target.with_name(f".{LOSS_PLOT}.tmp.png")
    fig.savefig(temporary, dpi=110)
    plt.close(fig)
    os.replace(temporary, target)
    return target
