"""lm-eval hooks of the long-context tasks (`!function utils.<name>` in the YAML files here).

The data depends on the evaluated model's tokenizer (lengths are counted in its tokens), so
no file path can be written into a YAML file ahead of time. Each task's `custom_dataset` hook
therefore builds its rows with `lh_convert.evaluate.builders` from the task metadata (`--metadata` JSON
merged with `--model_args`, or `TaskManager(metadata=...)`), writes them as JSONL into the data
folder (`data_dir`, else a folder in the lh-convert cache named by a hash of the options), and
reads that file back with the `datasets` JSON loader, the same loader `dataset_path: json`
would use. Files built from the same options are reused, never rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets

from lh_convert.util.errors import LhConvertError
from lh_convert.evaluate.builders import build_task_data, options_from_metadata, read_meta


def _dataset(task: str, metadata: dict[str, Any]) -> datasets.DatasetDict:
    options, data_dir = options_from_metadata(metadata)
    path = build_task_data(task=task, options=options, data_dir=data_dir)
    if not read_meta(data_dir / f"{task}.meta.json").get("rows"):
        raise LhConvertError(f"lh_{task} has nothing to evaluate: lengths {list(options.lengths)} "
                             f"are all beyond the {options.max_length}-token context (or the "
                             "held-out documents are shorter); pass smaller lengths")
    return datasets.load_dataset("json", data_files={"test": str(path)},
                                 cache_dir=str(Path(data_dir) / ".datasets-cache"))


def passkey(**metadata: Any) -> datasets.DatasetDict:
    """Passkey retrieval rows (`context`, `answer`, `length`, `depth`, ...)."""
    return _dataset("passkey", metadata)


def niah_single(**metadata: Any) -> datasets.DatasetDict:
    """Needle-in-a-haystack rows with one needle."""
    return _dataset("niah_single", metadata)


def niah_multikey(**metadata: Any) -> datasets.DatasetDict:
    """Needle-in-a-haystack rows with one asked needle and three distractors."""
    return _dataset("niah_multikey", metadata)


def position_loss(**metadata: Any) -> datasets.DatasetDict:
    """Loss-by-position rows (`context`, `continuation`, `bucket`, `num_tokens`, ...)."""
    return _dataset("position_loss", metadata)


def process_retrieval(doc: dict[str, Any], results: Sequence[tuple[float, bool]]
                      ) -> dict[str, float]:
    """acc: the answer is what greedy decoding would produce (exact match of every token);
    answer_logprob: its log-likelihood in nats."""
    logprob, is_greedy = results[0]
    return {"acc": float(is_greedy), "answer_logprob": float(logprob)}


def process_position_loss(doc: dict[str, Any], results: Sequence[tuple[float, bool]]
                          ) -> dict[str, tuple[float, int]]:
    """(negative log-likelihood of the bucket's tokens, their count)."""
    logprob, _ = results[0]
    return {"nll_per_token": (-float(logprob), int(doc["num_tokens"]))}


def token_weighted_mean(items: Sequence[tuple[float, int]]) -> float:
    """Total negative log-likelihood over total tokens: nats per token."""
    tokens = sum(count for _, count in items)
    return sum(nll for nll, _ in items) / tokens if tokens else float("nan")
