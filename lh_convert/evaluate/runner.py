"""`lh-convert eval`: evaluate a model, and optionally a baseline, through lm-eval.

Every model is loaded dense (SDPA; a run folder's newest checkpoint through
`load_run_model(..., lighthouse=False)`), wrapped in lm-eval's `HFLM` and run with
`lm_eval.simple_evaluate` on task definitions from `evals/`, registered with
`TaskManager(include_path=...)`, so `lm_eval --include_path evals` runs the same tasks.

- long-context suite (offline): passkey retrieval, needle in a haystack (one needle and four
  keys), and loss by position bucket on held-out documents. The data is built by
  `lh_convert.evaluate.builders` into `RESULTS_DIR/data/<model>/` before lm-eval starts (so skipped
  prompts are reported first); the tasks' hooks find it there by the options' fingerprint.
- short suite: lm-eval's hellaswag, arc_easy and piqa. Their hub datasets are checked first,
  within seconds, so an offline machine without them gets one line saying how to fetch them.

Results: lm-eval's JSON per model, `summary.json`, `results.md` (models side by side), and
PNG plots: retrieval accuracy (depth x length) per model, and loss by position.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..util import hf_load, verbosity
from ..util.errors import LhConvertError
from ..util.checksums import verify_checksums
from ..util.formats import verify_safetensors_dir
from ..util.hub import HUB_TIMEOUT_S, call_with_deadline, short_reason
from ..util.paths import shipped_folder
from .budget import (PROBE_TOKENS, cache_path, cached_requests, default_lengths, estimate_line,
                     long_context_budget, seconds_per_token)
from .builders import TASKS, EvalDataOptions, build_task_data, read_meta
from .report import RETRIEVAL_TASKS, write_report
from .results import ModelResults, labels, slug

# The lm-eval task definitions of the long-context suite: the repository's evals/, installed
# with the package.
EVALS_DIR = shipped_folder("evals")
SUITES: tuple[str, ...] = ("long-context", "short", "all")
POSITION_TASK = "lh_position_loss"
# lm-eval task -> its folder under lm_eval/tasks (indexing only these takes well under a second;
# lm-eval's whole index of 14,000 tasks takes about 16 s).
SHORT_TASKS: dict[str, str] = {"hellaswag": "hellaswag", "arc_easy": "arc", "piqa": "piqa"}
CACHE_CHECK_TIMEOUT_S = 120.0

Echo = Callable[[str], None]


@dataclass(frozen=True)
class EvalReport:
    """What `run_eval` evaluated and the files it wrote."""

    models: list[ModelResults]
    files: list[Path]


def run_eval(*, model: Path, out: Path, suite: str = "long-context",
             lengths: Sequence[int] | None = None, baseline: Path | None = None,
             limit: int | None = None, device: str | None = None, seed: int = 0,
             samples: int = 4, data: Sequence[str] = (), dtype: torch.dtype | None = None,
             echo: Echo = print) -> EvalReport:
    """Evaluate `model` (and `baseline`) dense on `suite` and write the report into `out`.

    Args:
        model, baseline: Hugging Face checkpoint folders or run folders (`manifest.json`).
        out: results folder (created; files in it are replaced).
        suite: "long-context", "short" or "all".
        lengths: prompt lengths in tokens of each model's own tokenizer; None: chosen from
            the device (``budget.DEFAULT_LENGTHS``: short on a CPU).
        limit: at most this many rows per task (lm-eval's limit; rows come grid by grid).
        device: "cpu" or "cuda"; None: cuda when available.
        seed, samples, data: the long-context data's seed, rows per (length, depth) cell, and
            the data whose held-out documents make the haystacks and the loss-by-position text.
        dtype: the weights' dtype; None: float32 on the CPU, the checkpoint's own on a GPU.
    """
    if suite not in SUITES:
        raise LhConvertError(f"unknown suite {suite!r}; pass one of {', '.join(SUITES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LhConvertError("--device cuda, but no CUDA GPU is visible; pass --device cpu")
    if lengths is None:
        lengths = default_lengths(device)
        echo(f"lengths: {', '.join(map(str, lengths))} tokens, the default on {device} "
             f"(pass --lengths for others)")
    sources = [Path(model)] + ([Path(baseline)] if baseline is not None else [])
    for source in sources:
        if not source.is_dir():
            raise LhConvertError(f"model folder {source} does not exist; pass a Hugging Face "
                                 "checkpoint folder or a run folder from `lh-convert convert`")
    for folder in (Path(out), *Path(out).parents):
        if folder.exists() and not folder.is_dir():
            raise LhConvertError(f"--out {out}: {folder} is a file, not a folder; pass a folder "
                                 f"for the results (it is created if missing)")
    if suite != "long-context":
        check_short_datasets(echo=echo)
    from lm_eval.models.huggingface import HFLM

    results = []
    for label, source in zip(labels(sources), sources):
        echo(f"evaluating {label} ({source}) on {device}")
        loaded, tokenizer, max_length = load_dense_model(path=source, device=device, dtype=dtype,
                                                         echo=echo)
        echo(f"  {loaded.config.model_type}, {loaded.num_parameters() / 1e6:.1f}M parameters, "
             f"dense SDPA, context {max_length:,} tokens")
        with _quiet_logger("lm_eval.models.huggingface"):  # its notes on a model object we pass
            lm = HFLM(pretrained=loaded, tokenizer=tokenizer, max_length=max_length, batch_size=1,
                      trust_remote_code=False)
        if verbosity.level() < 0:  # -q: lm-eval's request bars go quiet too
            quiet_request_bars(lm)
        results.append(evaluate_lm(
            lm=lm, label=label, source=str(source), tokenizer_dir=source, max_length=max_length,
            suite=suite, lengths=lengths, data_dir=Path(out) / "data" / slug(label),
            limit=limit, seed=seed, samples=samples, data=data, echo=echo,
            cache=cache_path(out, slug(label), source)))
        del lm, loaded
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    settings = (f"lengths {', '.join(map(str, lengths))} tokens; --samples {samples} rows per "
                f"(length, depth) cell; --limit "
                + (f"{limit} (at most {limit} rows per task)" if limit is not None
                   else "none (every row)"))
    files = write_report(models=results, out_dir=Path(out), settings=settings)
    echo(f"results in {out}: " + ", ".join(str(p.relative_to(out)) for p in files))
    return EvalReport(models=results, files=files)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def load_dense_model(*, path: Path, device: str, dtype: torch.dtype | None = None,
                     echo: Echo = print) -> tuple[Any, Any, int]:
    """(model, tokenizer, context in tokens) of a checkpoint or run folder, dense everywhere.

    A run folder (it has `manifest.json`) loads its newest checkpoint's weights through
    `load_run_model(lighthouse=False)`; its context is the larger of the config's
    `max_position_embeddings` and the run's target (dynamic RoPE keeps the former small).
    """
    path = Path(path)
    dtype = dtype or (torch.float32 if device == "cpu" else None)
    if (path / "manifest.json").is_file():
        from ..convert.run_model import load_run_model
        from ..train.checkpoint import latest_checkpoint

        model, manifest, report = load_run_model(path, lighthouse=False, dtype=dtype, device=device,
                                                 checkpoint=latest_checkpoint(path))
        echo(f"  run folder: {report.summary()}")
        context = max(model.config.max_position_embeddings, manifest.target_context)
    else:
        verify_safetensors_dir(path)  # safetensors only, as convert: never a pickle
        verify_checksums(path, fix="export or download that model again")
        model = hf_load.load_causal_lm(path, dtype=dtype or "auto", use_safetensors=True,
                                       attn_implementation="sdpa").to(device)
        context = getattr(model.config, "max_position_embeddings", None)
        if context is None:
            raise LhConvertError(f"{path}/config.json has no max_position_embeddings; add the "
                                 "model's context length to it")
    model.eval()
    return model, hf_load.load_tokenizer(path), int(context)


def evaluate_lm(*, lm: Any, label: str, source: str, tokenizer_dir: Path, max_length: int,
                suite: str, lengths: Sequence[int], data_dir: Path, limit: int | None = None,
                seed: int = 0, samples: int = 4, data: Sequence[str] = (),
                echo: Echo = print, cache: Path | None = None) -> ModelResults:
    """Run one lm-eval `LM` (an `HFLM`, or any stand-in) on `suite` and summarize it.

    The long-context data is built first (into `data_dir`), so its skipped prompts are
    reported before the evaluation starts, with the request count and a time estimate; the
    task hooks then reuse those files. `cache`: lm-eval's request cache (a path prefix), so a
    re-run after an interruption runs only the requests that had not finished.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    options = EvalDataOptions(tokenizer=str(tokenizer_dir), max_length=max_length,
                              lengths=tuple(lengths), seed=seed, samples=samples, data=tuple(data))
    tasks, include = [], [EVALS_DIR]
    if suite in ("long-context", "all"):
        echo(f"  long-context suite at lengths {', '.join(map(str, options.lengths))}: "
             f"building data in {data_dir}")
        for task in TASKS:
            build_task_data(task=task, options=options, data_dir=data_dir)
            meta, name = read_meta(data_dir / f"{task}.meta.json"), f"lh_{task}"
            if meta["skipped"]:
                echo(f"  {name}: skipped {sum(meta['skipped'].values())} rows longer than the "
                     f"{max_length:,}-token context (at {', '.join(meta['skipped'])} tokens)")
            if meta["rows"]:
                tasks.append(name)
            else:
                echo(f"  {name}: nothing to evaluate at these lengths")
    if suite in ("short", "all"):
        tasks += list(SHORT_TASKS)
        include += _short_task_folders()
        echo(f"  short suite: {', '.join(SHORT_TASKS)}")
    output: dict[str, Any] = {}
    if tasks:
        metadata = {"tokenizer": str(tokenizer_dir), "max_length": max_length,
                    "lengths": list(options.lengths), "seed": seed, "samples": samples,
                    "data": list(options.data), "data_dir": str(data_dir)}
        manager = TaskManager(include_path=[str(p) for p in include], include_defaults=False,
                              metadata=metadata)
        long_tasks = [task for task in tasks if task.startswith("lh_")]
        if long_tasks and hasattr(lm, "model"):
            probe = min(PROBE_TOKENS, min(options.lengths), max_length)
            echo(estimate_line(
                long_context_budget(data_dir, long_tasks, limit=limit, max_length=max_length),
                per_token_s=seconds_per_token(lm.model, tokens=probe), probe_tokens=probe,
                cached=cached_requests(cache) if cache is not None else 0))
        try:
            with quiet_git_probe(), without_metadata_hint():
                output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager,
                                                 limit=limit, log_samples=True,
                                                 use_cache=None if cache is None else str(cache))
        except KeyboardInterrupt:
            if cache is not None:
                echo(f"interrupted: {cached_requests(cache)} finished requests are cached in "
                     f"{cache.parent}; run the same command again to resume")
            raise
    samples_by_task = output.pop("samples", {})
    return ModelResults(label=label, source=source, max_length=max_length, lm_eval=output,
                        retrieval=_retrieval_cells(samples_by_task),
                        position_loss=_position_buckets(samples_by_task.get(POSITION_TASK, [])),
                        skipped=_skipped(data_dir) if suite != "short" else {})


def _retrieval_cells(samples_by_task: dict[str, list[dict]]
                     ) -> dict[str, dict[tuple[int, float], float]]:
    cells: dict[str, dict[tuple[int, float], float]] = {}
    for task in RETRIEVAL_TASKS:
        scores: dict[tuple[int, float], list[float]] = {}
        for sample in samples_by_task.get(task, []):
            key = (int(sample["doc"]["length"]), float(sample["doc"]["depth"]))
            scores.setdefault(key, []).append(float(sample["acc"]))
        if scores:
            cells[task] = {key: sum(v) / len(v) for key, v in sorted(scores.items())}
    return cells


def _position_buckets(samples: list[dict]) -> list[tuple[tuple[int, int], float, int]]:
    totals: dict[tuple[int, int], list[float]] = {}
    for sample in samples:
        nll, tokens = sample["nll_per_token"]
        total = totals.setdefault(tuple(sample["doc"]["bucket"]), [0.0, 0, 0])
        total[0], total[1], total[2] = total[0] + nll, total[1] + tokens, total[2] + 1
    return [(bucket, nll / tokens, int(docs))
            for bucket, (nll, tokens, docs) in sorted(totals.items()) if tokens]


def _skipped(data_dir: Path) -> dict[str, dict[int, int]]:
    """lm-eval task -> {length: rows skipped}, from the builders' `.meta.json` files."""
    counts = {task: read_meta(data_dir / f"{task}.meta.json").get("skipped", {}) for task in TASKS}
    return {f"lh_{task}": {int(k): v for k, v in found.items()} for task, found in counts.items()}


# ---- the short suite's datasets ----------------------------------------------------------------


def _short_task_folders() -> list[Path]:
    import lm_eval.tasks

    return [Path(lm_eval.tasks.__file__).parent / folder for folder in SHORT_TASKS.values()]


def check_short_datasets(*, hub_timeout_s: float = HUB_TIMEOUT_S,
                         cache_timeout_s: float = CACHE_CHECK_TIMEOUT_S,
                         echo: Echo = print) -> None:
    """Make sure the short suite's hub datasets can be loaded, within seconds.

    The hub is asked once, under a deadline; when it does not answer, a child process with
    the hub switched off loads each dataset from the local cache. Anything missing is one
    `LhConvertError` that names the datasets and the command that prefetches them.
    """
    from huggingface_hub import HfApi
    from lm_eval.tasks import TaskManager

    index = TaskManager(include_path=[str(p) for p in _short_task_folders()],
                        include_defaults=False).task_index
    needed = [(index[task].cfg["dataset_path"], index[task].cfg.get("dataset_name"))
              for task in SHORT_TASKS]
    try:
        call_with_deadline(lambda: HfApi().dataset_info(needed[0][0]), timeout_s=hub_timeout_s)
        return
    except Exception as error:  # any failure means lm-eval could not download either
        reason = short_reason(error, kind="dataset")
    missing = _uncached(needed, timeout_s=cache_timeout_s)
    if missing:
        loads = "; ".join(f"datasets.load_dataset({path!r}{f', {name!r}' if name else ''})"
                          for path, name in missing)
        names = ", ".join(f"{path}{f' ({name})' if name else ''}" for path, name in missing)
        raise LhConvertError(
            f"the short suite needs hub datasets that are not cached here and the hub is "
            f"unreachable ({reason}): {names}; run `python -c \"import datasets; {loads}\"` "
            f"where the hub is reachable, or set HF_DATASETS_CACHE (or HF_HOME) to a cache that "
            f"has them")
    echo(f"  the hub is unreachable ({reason}); the short suite reads the cached datasets "
         f"(set HF_HUB_OFFLINE=1 to skip the datasets library's retries)")


def _uncached(needed: list[tuple[str, str | None]], *, timeout_s: float
              ) -> list[tuple[str, str | None]]:
    """The datasets in `needed` that do not load with the hub switched off (a child process,
    since the switch is read when `datasets` is imported)."""
    code = ("import json, sys, datasets\nmissing = []\n"
            "for path, name in json.loads(sys.argv[1]):\n"
            "    try:\n        datasets.load_dataset(path, name)\n"
            "    except Exception:\n        missing.append([path, name])\n"
            "print(json.dumps(missing))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(needed)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        lines = done.stdout.strip().splitlines()
        return [tuple(item) for item in json.loads(lines[-1])] if lines else list(needed)
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return list(needed)


class _MetadataHint(logging.Filter):
    """lm-eval's note on tasks built by a function names a key of its RULER tasks
    (``max_seq_lengths``), not ours: our tasks take their lengths from lh-convert's ``--lengths``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


@contextlib.contextmanager
def without_metadata_hint() -> Iterator[None]:
    """Drop that misleading hint (below ``-v``), for the evaluation only."""
    logger, hint = logging.getLogger("lm_eval.api.task"), _MetadataHint()
    if verbosity.level() < 1:
        logger.addFilter(hint)
    try:
        yield
    finally:
        logger.removeFilter(hint)


REQUEST_METHODS = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def quiet_request_bars(lm: Any) -> None:
    """lm-eval draws a progress bar per request type unless the call passes ``disable_tqdm``,
    which its evaluator never does: pass it from the model object itself (under ``-q``)."""
    for name in REQUEST_METHODS:
        setattr(lm, name, functools.partial(getattr(lm, name), disable_tqdm=True))


@contextlib.contextmanager
def quiet_git_probe() -> Iterator[None]:
    """lm-eval records the git commit of the working directory by running ``git describe``
    with the terminal as its stderr, so outside a repository every eval printed "fatal: not a
    git repository". Run the same probe with its stderr discarded, for the evaluation only."""
    import lm_eval.evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    def git_commit_hash() -> str | None:
        try:
            return subprocess.check_output(["git", "describe", "--always"],
                                           stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())  # lm-eval's own fallback

    original = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = git_commit_hash
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = original
