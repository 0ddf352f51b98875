"""What a run's next process finishes for the one before it, under the run's lock.

A killed or interrupted process can leave hidden staging folders (``.step-N.tmp-*``, each
nearly a full checkpoint) and files (``.NAME.tmp-*``), more checkpoints than
``keep_checkpoints`` (killed between the final save and the pruning) and no ``loss.png``
(killed before the plot). ``tidy_run`` removes the leftovers, prunes and plots.
"""

from __future__ import annotations

from pathlib import Path

from ..util.atomic import remove_stale_staging
from .checkpoint import CHECKPOINTS, prune_checkpoints
from .metrics import LOSS_PLOT, METRICS, plot_run


def tidy_run(run_dir: Path, *, keep: int) -> list[Path]:
    """Finish an interrupted process's work on ``run_dir``; return the leftovers removed.

    Call only while holding the run's lock (no other process writes in it).
    """
    run_dir = Path(run_dir)
    removed = remove_stale_staging(run_dir / CHECKPOINTS) + remove_stale_staging(run_dir)
    for leftover in sorted(run_dir.glob(".*.tmp-*")):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    prune_checkpoints(run_dir, keep=keep)
    metrics, plot = run_dir / METRICS, run_dir / LOSS_PLOT
    if metrics.is_file() and (not plot.is_file() or plot.stat().st_mtime < metrics.stat().st_mtime):
        plot_run(run_dir)
    return removed
