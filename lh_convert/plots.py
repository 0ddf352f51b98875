"""PNG plots: a run's loss curves (both stages on one figure, the switch marked) and the
evaluation's retrieval heat maps and loss by position."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import read_metrics

if TYPE_CHECKING:
    from .evaluate import ModelResults

LOSS_PLOT = "loss.png"


def plot_run(run_dir: Path) -> Path | None:
    """Write ``RUN_DIR/loss.png``: training loss per step, validation loss and late-position
    loss, stage 1 and recovery in different colours, a dashed line at the switch."""
    plt = pyplot()
    records = read_metrics(run_dir)
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
    save_figure(fig, target)
    return target


def plot_retrieval(models: Sequence[ModelResults], path: Path, *, tasks: Sequence[str]) -> bool:
    """Heat maps, one per model (rows) and retrieval task (columns): depth x length, accuracy
    from 0 (red) to 1 (green); lengths beyond a model's context are grey and marked."""
    tasks = [t for t in tasks if any(t in m.retrieval for m in models)]
    if not tasks:
        return False
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(len(models), len(tasks), squeeze=False, layout="constrained",
                             figsize=(4.2 * len(tasks) + 1, 3.2 * len(models)))
    for row, model in enumerate(models):
        for column, task in enumerate(tasks):
            cells, skipped = model.retrieval.get(task, {}), model.skipped.get(task, {})
            lengths = sorted({n for n, _ in cells} | set(skipped))
            depths = sorted({d for _, d in cells}) or [0.0]
            grid = np.full((len(depths), len(lengths)), np.nan)
            for (n, d), acc in cells.items():
                grid[depths.index(d), lengths.index(n)] = acc
            ax = axes[row][column]
            ax.set_facecolor("lightgrey")
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            for (i, j), value in np.ndenumerate(grid):
                ax.text(j, i, "skip" if np.isnan(value) else f"{value:.2f}", ha="center",
                        va="center", fontsize=7)
            ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths], fontsize=7)
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
            ax.set(xlabel="length (tokens)" if row == len(models) - 1 else "",
                   ylabel=f"{model.label}\nneedle depth" if column == 0 else "",
                   title=task.removeprefix("lh_") if row == 0 else "")
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (exact greedy match)")
    return save_figure(fig, path)


def plot_position_loss(models: Sequence[ModelResults], path: Path) -> bool:
    """Loss (nats per token) of each position bucket, one line per model, positions on a log
    axis (each point at its bucket's end)."""
    if not any(m.position_loss for m in models):
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model in models:
        ax.plot([b for (_, b), _, _ in model.position_loss],
                [nll for _, nll, _ in model.position_loss], "o-", label=model.label)
    ends = sorted({b for m in models for (_, b), _, _ in m.position_loss})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ends, [f"{end:,}" for end in ends], fontsize=7)
    ax.set(xlabel="position bucket end (tokens)", ylabel="loss (nats/token)",
           title="held-out loss by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, *, dpi: int = 110) -> bool:
    """Write ``fig`` to ``path`` as PNG atomically (a hidden sibling, then a rename), close it."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(temporary, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    os.replace(temporary, path)
    return True


def plot_train_throughput(rows: Sequence[dict], path: Path) -> bool:
    """Training tokens/s (per GPU) by sequence length, dense vs the Lighthouse stage side by
    side, the speed-up written over each pair (rows as ``bench train`` writes them)."""
    lengths = sorted({row["n"] for row in rows})
    by = {(row["n"], row["mode"]): row for row in rows}
    if not lengths:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38
    for offset, mode, colour in ((-width / 2, "dense", "tab:orange"),
                                 (width / 2, "lighthouse", "tab:blue")):
        xs = [i + offset for i, n in enumerate(lengths) if (n, mode) in by]
        heights = [by[(n, mode)]["tokens_per_s"] / 1e3 for n in lengths if (n, mode) in by]
        ax.bar(xs, heights, width, color=colour,
               label="dense SDPA (= recovery step)" if mode == "dense" else "Lighthouse stage")
    for i, n in enumerate(lengths):
        if (n, "dense") in by and (n, "lighthouse") in by:
            light = by[(n, "lighthouse")]
            ratio = light["tokens_per_s"] / by[(n, "dense")]["tokens_per_s"]
            ax.text(i + width / 2, light["tokens_per_s"] / 1e3, f"{ratio:.2f}x", ha="center",
                    va="bottom", fontsize=9)
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
    ax.set(xlabel="sequence length", ylabel="training tokens/s per GPU (thousands)",
           title="training-step throughput")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
