"""The evaluation's report: ``results.md`` (models side by side), ``summary.json``, each
model's lm-eval JSON, and PNG plots (retrieval heat maps, loss by position)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from ..util.atomic import write_json_atomic, write_text_atomic
from ..util.figures import pyplot, save_figure
from .results import ModelResults, slug

RETRIEVAL_TASKS: tuple[str, ...] = ("lh_passkey", "lh_niah_single", "lh_niah_multikey")
RESULTS_MD, SUMMARY_JSON = "results.md", "summary.json"
RETRIEVAL_PNG, POSITION_PNG = "retrieval.png", "position_loss.png"


def _metrics(model: ModelResults) -> dict[str, dict[str, float]]:
    """task -> metric -> value, from lm-eval's results (stderr entries and groups left out)."""
    table: dict[str, dict[str, float]] = {}
    for task, values in model.lm_eval.get("results", {}).items():
        for key, value in values.items():
            metric, _, _ = key.partition(",")
            if "," in key and "stderr" not in metric and isinstance(value, (int, float)):
                table.setdefault(task, {})[metric] = float(value)
    return table


def write_report(*, models: Sequence[ModelResults], out_dir: Path,
                 settings: str | None = None) -> list[Path]:
    """Write results.md, summary.json, each model's lm-eval JSON and the PNG plots;
    ``settings`` (lengths, --samples, --limit) is written under results.md's title."""
    from lm_eval.utils import handle_non_serializable

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / RESULTS_MD, out_dir / SUMMARY_JSON]
    for model in models:
        path = out_dir / slug(model.label) / "lm_eval_results.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        plain = json.dumps(model.lm_eval, default=handle_non_serializable)
        write_json_atomic(path, json.loads(plain))
        files.append(path)
    write_json_atomic(out_dir / SUMMARY_JSON, {"models": [{
        "label": m.label, "source": m.source, "max_length": m.max_length, "metrics": _metrics(m),
        "retrieval": {task: [{"length": n, "depth": d, "acc": acc} for (n, d), acc in cells.items()]
                      for task, cells in m.retrieval.items()},
        "position_loss": [{"start": a, "end": b, "nll_per_token": nll, "documents": docs}
                          for (a, b), nll, docs in m.position_loss],
        "skipped": {task: {str(k): v for k, v in s.items()} for task, s in m.skipped.items()},
    } for m in models]})
    write_text_atomic(out_dir / RESULTS_MD, _markdown(models, settings))
    for plot, name in ((partial(plot_retrieval, tasks=RETRIEVAL_TASKS), RETRIEVAL_PNG),
                       (plot_position_loss, POSITION_PNG)):
        if plot(models, out_dir / name):
            files.append(out_dir / name)
    return files


def _markdown(models: Sequence[ModelResults], settings: str | None = None) -> str:
    header = "| | " + " | ".join(m.label for m in models) + " |"
    rule = "|---|" + "---|" * len(models)
    lines = ["# lh-convert eval", "", *([f"Settings: {settings}.", ""] if settings else []),
             header, rule,
             "| source | " + " | ".join(f"`{m.source}`" for m in models) + " |",
             "| context (tokens) | " + " | ".join(f"{m.max_length:,}" for m in models) + " |",
             "", "## lm-eval metrics", "",
             "| task | metric | " + " | ".join(m.label for m in models) + " |",
             "|---|---|" + "---|" * len(models)]
    metrics = [_metrics(m) for m in models]
    for task in sorted({t for table in metrics for t in table}):
        for metric in sorted({k for table in metrics for k in table.get(task, {})}):
            values = [table.get(task, {}).get(metric) for table in metrics]
            lines.append(f"| {task} | {metric} | "
                         + " | ".join("-" if v is None else f"{v:.4g}" for v in values) + " |")
    tasks = [t for t in RETRIEVAL_TASKS
             if any(t in m.retrieval or m.skipped.get(t) for m in models)]
    if tasks:
        lines += ["", "## Retrieval accuracy by length (mean over depths; exact greedy match)", "",
                  "| task | length | " + " | ".join(m.label for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for task in tasks:
            lengths = sorted({n for m in models for n, _ in m.retrieval.get(task, {})}
                             | {n for m in models for n in m.skipped.get(task, {})})
            for length in lengths:
                lines.append(f"| {task} | {length:,} | " + " | ".join(
                    _length_cell(m, task, length) for m in models) + " |")
    if any(m.position_loss for m in models):
        buckets = sorted({bucket for m in models for bucket, _, _ in m.position_loss})
        lines += ["", "## Loss by position (nats per token; documents in parentheses)", "",
                  "| positions | " + " | ".join(m.label for m in models) + " |",
                  "|---|" + "---|" * len(models)]
        for bucket in buckets:
            cells = []
            for m in models:
                found = [(nll, docs) for b, nll, docs in m.position_loss if b == bucket]
                cells.append(f"{found[0][0]:.3f} ({found[0][1]})" if found else "-")
            lines.append(f"| {bucket[0]:,}-{bucket[1]:,} | " + " | ".join(cells) + " |")
    skipped = [f"- {m.label}: {task} skipped {sum(s.values())} rows longer than the "
               f"{m.max_length:,}-token context ({', '.join(f'{k:,}' for k in s)})"
               for m in models for task, s in m.skipped.items() if s]
    if skipped:
        lines += ["", "## Skipped (never truncated)", ""] + skipped
    return "\n".join(lines) + "\n"


def _length_cell(model: ModelResults, task: str, length: int) -> str:
    if length in model.skipped.get(task, {}):
        return f"skipped ({model.skipped[task][length]} > context)"
    scores = [acc for (n, _), acc in model.retrieval.get(task, {}).items() if n == length]
    return f"{sum(scores) / len(scores):.3f}" if scores else "-"


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
