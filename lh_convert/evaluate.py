"""`lh-convert eval`: evaluate a model, and optionally a baseline, through lm-eval.

Every model is loaded dense (SDPA; a run folder's newest checkpoint through
`load_run_model(..., lighthouse=False)`), wrapped in lm-eval's `HFLM` and run with
`lm_eval.simple_evaluate` on task definitions from `evals/`, registered with
`TaskManager(include_path=...)`, so `lm_eval --include_path evals` runs the same tasks.

- long-context suite (offline): passkey retrieval, needle in a haystack (one needle and four
  keys), and loss by position bucket on held-out documents. The data is built by
  `lh_convert.eval_data` into `RESULTS_DIR/data/<model>/` before lm-eval starts (so skipped
  prompts are reported first); the tasks' hooks find it there by the options' fingerprint.
- short suite: lm-eval's hellaswag, arc_easy and piqa. Their hub datasets are checked first,
  within seconds, so an offline machine without them gets one line saying how to fetch them.

Results: lm-eval's JSON per model, `summary.json`, `results.md` (models side by side), and
PNG plots: retrieval accuracy (depth x length) per model, and loss by position.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .errors import LhConvertError
from .eval_data import TASKS, EvalDataOptions, build_task_data, read_meta
from .hub import call_with_deadline, short_reason
from .plots import plot_position_loss, plot_retrieval

EVALS_DIR = Path(__file__).resolve().parent.parent / "evals"
SUITES: tuple[str, ...] = ("long-context", "short", "all")
RETRIEVAL_TASKS: tuple[str, ...] = ("lh_passkey", "lh_niah_single", "lh_niah_multikey")
POSITION_TASK = "lh_position_loss"
# lm-eval task -> its folder under lm_eval/tasks (indexing only these takes well under a second;
# lm-eval's whole index of 14,000 tasks takes about 16 s).
SHORT_TASKS: dict[str, str] = {"hellaswag": "hellaswag", "arc_easy": "arc", "piqa": "piqa"}
HUB_TIMEOUT_S = 10.0
CACHE_CHECK_TIMEOUT_S = 120.0
RESULTS_MD, SUMMARY_JSON = "results.md", "summary.json"
RETRIEVAL_PNG, POSITION_PNG = "retrieval.png", "position_loss.png"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class ModelResults:
    """One model's results.

    Attributes:
        label: the model's column name.
        source: the folder it was loaded from.
        max_length: its context in tokens; longer prompts were skipped.
        lm_eval: lm-eval's results (`simple_evaluate`'s output without per-sample logs).
        retrieval: task -> {(length, depth): accuracy}.
        position_loss: ((bucket start, bucket end), nats per token, documents) per bucket.
        skipped: task -> {length (or bucket end): rows skipped, longer than the context}.
    """

    label: str
    source: str
    max_length: int
    lm_eval: dict[str, Any]
    retrieval: dict[str, dict[tuple[int, float], float]] = field(default_factory=dict)
    position_loss: list[tuple[tuple[int, int], float, int]] = field(default_factory=list)
    skipped: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalReport:
    """What `run_eval` evaluated and the files it wrote."""

    models: list[ModelResults]
    files: list[Path]


def parse_lengths(text: str) -> tuple[int, ...]:
    """``"4k,8k,16k,32k"`` -> ``(4096, 8192, 16384, 32768)``."""
    from .surgery import parse_context

    try:
        lengths = tuple(parse_context(part) for part in text.split(",") if part.strip())
    except LhConvertError:
        lengths = ()
    if not lengths:
        raise LhConvertError(f"malformed --lengths {text!r}: use token counts such as "
                             "4k,8k,16k,32k")
    return lengths


def run_eval(*, model: Path, out: Path, suite: str = "long-context",
             lengths: Sequence[int] = (4096, 8192, 16384, 32768), baseline: Path | None = None,
             limit: int | None = None, device: str | None = None, seed: int = 0,
             samples: int = 4, data: Sequence[str] = (), dtype: torch.dtype | None = None,
             echo: Echo = print) -> EvalReport:
    """Evaluate `model` (and `baseline`) dense on `suite` and write the report into `out`.

    Args:
        model, baseline: Hugging Face checkpoint folders or run folders (`manifest.json`).
        out: results folder (created; files in it are replaced).
        suite: "long-context", "short" or "all".
        lengths: prompt lengths in tokens of each model's own tokenizer.
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
    sources = [Path(model)] + ([Path(baseline)] if baseline is not None else [])
    for source in sources:
        if not source.is_dir():
            raise LhConvertError(f"model folder {source} does not exist; pass a Hugging Face "
                                 "checkpoint folder or a run folder from `lh-convert convert`")
    if suite != "long-context":
        check_short_datasets(echo=echo)
    from lm_eval.models.huggingface import HFLM

    results = []
    for label, source in zip(_labels(sources), sources):
        echo(f"evaluating {label} ({source}) on {device}")
        loaded, tokenizer, max_length = load_dense_model(path=source, device=device, dtype=dtype,
                                                         echo=echo)
        echo(f"  {loaded.config.model_type}, {loaded.num_parameters() / 1e6:.1f}M parameters, "
             f"dense SDPA, context {max_length:,} tokens")
        lm = HFLM(pretrained=loaded, tokenizer=tokenizer, max_length=max_length, batch_size=1)
        results.append(evaluate_lm(
            lm=lm, label=label, source=str(source), tokenizer_dir=source, max_length=max_length,
            suite=suite, lengths=lengths, data_dir=Path(out) / "data" / _slug(label),
            limit=limit, seed=seed, samples=samples, data=data, echo=echo))
        del lm, loaded
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    files = write_report(models=results, out_dir=Path(out))
    echo(f"results in {out}: " + ", ".join(str(p.relative_to(out)) for p in files))
    return EvalReport(models=results, files=files)


def load_dense_model(*, path: Path, device: str, dtype: torch.dtype | None = None,
                     echo: Echo = print) -> tuple[Any, Any, int]:
    """(model, tokenizer, context in tokens) of a checkpoint or run folder, dense everywhere.

    A run folder (it has `manifest.json`) loads its newest checkpoint's weights through
    `load_run_model(lighthouse=False)`; its context is the larger of the config's
    `max_position_embeddings` and the run's target (dynamic RoPE keeps the former small).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    dtype = dtype or (torch.float32 if device == "cpu" else None)
    if (path / "manifest.json").is_file():
        from .runs import load_run_model

        model, manifest, report = load_run_model(path, lighthouse=False, dtype=dtype, device=device)
        echo(f"  run folder: {report.summary()}")
        context = max(model.config.max_position_embeddings, manifest.target_context)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto",
                                                     attn_implementation="sdpa").to(device)
        context = getattr(model.config, "max_position_embeddings", None)
        if context is None:
            raise LhConvertError(f"{path}/config.json has no max_position_embeddings; add the "
                                 "model's context length to it")
    model.eval()
    return model, AutoTokenizer.from_pretrained(path), int(context)


def evaluate_lm(*, lm: Any, label: str, source: str, tokenizer_dir: Path, max_length: int,
                suite: str, lengths: Sequence[int], data_dir: Path, limit: int | None = None,
                seed: int = 0, samples: int = 4, data: Sequence[str] = (),
                echo: Echo = print) -> ModelResults:
    """Run one lm-eval `LM` (an `HFLM`, or any stand-in) on `suite` and summarize it.

    The long-context data is built first (into `data_dir`), so its skipped prompts are
    reported before the evaluation starts; the task hooks then reuse those files.
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
        output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager,
                                         limit=limit, log_samples=True)
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


# ---- the report --------------------------------------------------------------------------------


def _labels(sources: Sequence[Path]) -> list[str]:
    names = [Path(source).resolve().name or "model" for source in sources]
    if len(names) == 2 and names[0] == names[1]:
        names = [f"{names[0]} (model)", f"{names[1]} (baseline)"]
    return names


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"


def _metrics(model: ModelResults) -> dict[str, dict[str, float]]:
    """task -> metric -> value, from lm-eval's results (stderr entries and groups left out)."""
    table: dict[str, dict[str, float]] = {}
    for task, values in model.lm_eval.get("results", {}).items():
        for key, value in values.items():
            metric, _, _ = key.partition(",")
            if "," in key and "stderr" not in metric and isinstance(value, (int, float)):
                table.setdefault(task, {})[metric] = float(value)
    return table


def write_report(*, models: Sequence[ModelResults], out_dir: Path) -> list[Path]:
    """Write results.md, summary.json, each model's lm-eval JSON and the PNG plots."""
    from lm_eval.utils import handle_non_serializable

    from .checkpoint import write_json_atomic, write_text_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [out_dir / RESULTS_MD, out_dir / SUMMARY_JSON]
    for model in models:
        path = out_dir / _slug(model.label) / "lm_eval_results.json"
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
    write_text_atomic(out_dir / RESULTS_MD, _markdown(models))
    for plot, name in ((partial(plot_retrieval, tasks=RETRIEVAL_TASKS), RETRIEVAL_PNG),
                       (plot_position_loss, POSITION_PNG)):
        if plot(models, out_dir / name):
            files.append(out_dir / name)
    return files


def _markdown(models: Sequence[ModelResults]) -> str:
    header = "| | " + " | ".join(m.label for m in models) + " |"
    rule = "|---|" + "---|" * len(models)
    lines = ["# lh-convert eval", "", header, rule,
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


