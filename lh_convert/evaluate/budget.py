"""An evaluation that fits the machine: default lengths chosen from the device, the request
count and a time estimate said before lm-eval starts, and a request cache per model so an
interrupted evaluation resumes where it stopped.

The cache is lm-eval's own (``simple_evaluate(use_cache=...)``: a SQLite file that keeps
every finished request as it finishes). Its keys are the requests alone, not the model, so
each model gets its own file, named by a fingerprint of its weight files.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..util.units import duration

# What an evaluation runs at when no --lengths is given: short on a CPU (a 135M model at
# 1K-2K takes minutes there, at 4K-32K about an hour), the suite's lengths on a GPU.
DEFAULT_LENGTHS = {"cpu": (1024, 2048), "cuda": (4096, 8192, 16384, 32768)}
CACHE_FOLDER = "cache"
# The forward timed for the estimate: this many tokens (or the shortest length, if shorter).
PROBE_TOKENS = 512


def default_lengths(device: str) -> tuple[int, ...]:
    return DEFAULT_LENGTHS["cuda" if device == "cuda" else "cpu"]


def model_fingerprint(source: Path) -> str:
    """Names, sizes and modification times of a model folder's weight files (a run folder's
    checkpoints included): a changed model gets a fresh cache."""
    source = Path(source).resolve()
    digest = hashlib.sha256(str(source).encode())
    for path in sorted(source.rglob("*.safetensors")):
        stat = path.stat()
        digest.update(f"{path.relative_to(source)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def cache_path(out: Path, label: str, source: Path) -> Path:
    """The request cache's path prefix (lm-eval appends ``_rank0.db``)."""
    return Path(out) / CACHE_FOLDER / f"{label}-{model_fingerprint(source)}"


def cached_requests(prefix: Path) -> int:
    """How many finished requests the cache at ``prefix`` holds (0 when there is none)."""
    db = Path(f"{prefix}_rank0.db")
    if not db.is_file():
        return 0
    from sqlitedict import SqliteDict

    with SqliteDict(str(db), flag="r") as cache:
        return len(cache)


@dataclass(frozen=True)
class Budget:
    """What an evaluation will ask of the model: requests per task and their tokens."""

    requests: dict[str, int]
    tokens: int

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def long_context_budget(data_dir: Path, tasks: Sequence[str], *, limit: int | None,
                        max_length: int) -> Budget:
    """Requests (one log-likelihood per row) and tokens of the built long-context tasks."""
    requests, tokens = {}, 0
    for task in tasks:
        path = Path(data_dir) / f"{task.removeprefix('lh_')}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()] if path.is_file() else []
        rows = rows[:limit] if limit is not None else rows
        requests[task] = len(rows)
        tokens += sum(int(row.get("length") or (row.get("bucket") or [0, max_length])[1])
                      for row in rows)
    return Budget(requests=requests, tokens=tokens)


def seconds_per_token(model: Any, *, tokens: int) -> float:
    """Seconds per token of one dense forward of ``tokens`` tokens (timed after a warm-up)."""
    import torch

    ids = torch.zeros((1, tokens), dtype=torch.long, device=model.device)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        started = time.perf_counter()
        model(input_ids=ids, use_cache=False)
    return (time.perf_counter() - started) / tokens


def estimate_line(budget: Budget, *, per_token_s: float, probe_tokens: int,
                  cached: int = 0) -> str:
    """``N requests (...), about T`` as said before lm-eval starts."""
    parts = ", ".join(f"{task} {count}" for task, count in budget.requests.items())
    todo = max(budget.total - cached, 0)
    share = todo / budget.total if budget.total else 0.0
    seconds = budget.tokens * per_token_s * share
    resumed = f"; {cached} already cached, {todo} to run" if cached else ""
    return (f"  {budget.total} requests ({parts}; {budget.tokens:,} tokens){resumed}: about "
            f"{duration(seconds)} (a {probe_tokens}-token forward scaled by tokens; longer "
            f"prompts cost more per token)")
