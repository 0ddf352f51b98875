"""``--report-to none|tensorboard|wandb`` (HF Trainer's name): every record the training log
(``metrics.jsonl``) gets is also sent to TensorBoard event files (``RUN_DIR/tensorboard/``)
or to Weights & Biases (offline unless ``WANDB_MODE`` says otherwise; its files go to
``RUN_DIR/wandb/``).

``metrics.append_metrics`` forwards each record to the reporters opened for its run folder
by ``reporting(...)``, a context manager the command line wraps around a stage, so the
trainer needs no knowledge of them. A missing package is a one-line error naming what to
install, raised before any training starts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from ..util.errors import LhConvertError

REPORT_TO: tuple[str, ...] = ("none", "tensorboard", "wandb")
TENSORBOARD_FOLDER = "tensorboard"
# The numbers of a record worth a curve; the rest (stage names, steps) are not scalars.
_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "step_s", "memory_gib", "val_loss",
            "val_late_loss", "topk", "lighthouse_layers")

_ACTIVE: dict[Path, list[Reporter]] = {}


class Reporter(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """``{"train/loss": 2.1, ...}``: a record's numbers, named by its kind."""
    kind = record.get("kind", "train")
    return {f"{kind}/{key}": float(record[key]) for key in _SCALARS
            if isinstance(record.get(key), (int, float)) and not isinstance(record[key], bool)}


class TensorBoardReporter:
    """Event files in ``RUN_DIR/tensorboard/``, opened at the first record (the run folder may
    not exist before then: ``extend`` creates it)."""

    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise LhConvertError("--report-to tensorboard needs the tensorboard package; "
                                 "`pip install tensorboard`, or pass --report-to none") from None
        self.run_dir, self.make_writer, self.writer = Path(run_dir), SummaryWriter, None

    def log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            self.writer = self.make_writer(log_dir=str(self.run_dir / TENSORBOARD_FOLDER))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["step"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandbReporter:
    """A Weights & Biases run (offline by default) with the recipe as its config, files in
    ``RUN_DIR/wandb/``; one id per run folder, so a resumed run continues the same run."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise LhConvertError("--report-to wandb needs the wandb package; `pip install "
                                 "wandb`, or pass --report-to none") from None
        self.wandb, self.run_dir, self.config, self.run = wandb, Path(run_dir).resolve(), config, None

    def log(self, record: dict[str, Any]) -> None:
        if self.run is None:
            os.environ.setdefault("WANDB_MODE", "offline")  # nothing leaves the machine unasked
            self.run = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT", "lh-convert"), name=self.run_dir.name,
                dir=str(self.run_dir), config=self.config, resume="allow",
                id=hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:16])
        self.run.log(scalars(record), step=int(record["step"]))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def open_reporter(kind: str, run_dir: Path, config: dict[str, Any]) -> Reporter | None:
    if kind not in REPORT_TO:
        raise LhConvertError(f"--report-to {kind!r}: choose one of {', '.join(REPORT_TO)}")
    if kind == "tensorboard":
        return TensorBoardReporter(run_dir)
    if kind == "wandb":
        return WandbReporter(run_dir, config)
    return None


@contextmanager
def reporting(kind: str, run_dir: Path, config: dict[str, Any] | None = None
              ) -> Iterator[Reporter | None]:
    """Forward ``run_dir``'s log records to ``kind`` while the block runs (main process only:
    only it writes the log)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    reporter = open_reporter(kind, run_dir, config or {})
    key = Path(run_dir).resolve()
    if reporter is not None:
        _ACTIVE.setdefault(key, []).append(reporter)
    try:
        yield reporter
    finally:
        if reporter is not None:
            _ACTIVE[key].remove(reporter)
            reporter.close()


def forward(run_dir: Path, record: dict[str, Any]) -> None:
    """Send one log record to the reporters open for ``run_dir`` (none: nothing happens)."""
    for reporter in _ACTIVE.get(Path(run_dir).resolve(), ()):
        reporter.log(record)
