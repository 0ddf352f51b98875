"""`lh-convert eval` through lm-eval on CPU: the long-context suite end to end on tiny models
(a random model retrieves nothing; a model that copies its input retrieves every key through
the same tasks), the report with a baseline, `lm_eval --include_path evals` through the Python
API, and the short suite's one-line error when its hub datasets cannot be had.
"""

from __future__ import annotations

import inspect
import json
import shlex
import string
import textwrap
import time
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from click.testing import CliRunner
from lm_eval.api.model import LM

from lh_convert.evaluate import runner as evaluate
from lh_convert.convert.settings import LighthouseSettings
from lh_convert.cli import main
from lh_convert.evaluate.runner import EVALS_DIR, RETRIEVAL_TASKS, evaluate_lm
from lh_convert.convert.surgery import convert

CONTEXT = 1024


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four text files; the one held out makes the haystacks and the loss-by-position text."""
    folder = tmp_path_factory.mktemp("corpus")
    for name, module in zip("abcd", (textwrap, string, shlex, inspect)):
        (folder / f"{name}.txt").write_text(inspect.getsource(module)[:20000])
    return folder


@pytest.fixture(scope="module")
def random_model(make_tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("models") / "random-llama",
                                max_position_embeddings=CONTEXT)


class CopyingLM(LM):
    """A model that copies its input by construction (an induction head in plain Python): after
    a context, it continues with whatever followed the longest earlier occurrence of the
    context's ending. It finds any key whose question repeats the words before the key."""

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        results = []
        for request in requests:
            context, continuation = request.args
            copied = self._continue(context, len(continuation))
            results.append((0.0, True) if copied == continuation else (-30.0, False))
        return results

    @staticmethod
    def _continue(context: str, size: int) -> str:
        low, high = 0, len(context) - 1  # the longest suffix that also occurs earlier
        while low < high:
            middle = (low + high + 1) // 2
            found = context.find(context[-middle:], 0, len(context) - 1) >= 0
            low, high = (middle, high) if found else (low, middle - 1)
        if low == 0:
            return ""
        start = context.rfind(context[-low:], 0, len(context) - 1) + low
        return context[start: start + size]

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        raise NotImplementedError

    def generate_until(self, requests: list) -> list[str]:
        raise NotImplementedError


def _cli(*args: str):
    return CliRunner().invoke(main, ["eval", *args])


def test_long_context_suite_with_a_baseline_run_folder(random_model: Path, corpus: Path,
                                                      make_tiny_checkpoint, tmp_path: Path) -> None:
    run = tmp_path / "run-llama"
    convert(model=str(make_tiny_checkpoint("llama", seed=1)), ctx=1024, out=run,
            settings=LighthouseSettings(levels=2, pooling=2, topk=16, tile=8, dense_layers=(0,)))
    out = tmp_path / "results"
    result = _cli("--model", str(random_model), "--baseline", str(run), "--lengths", "512,1k,2k",
                  "--samples", "1", "--data", str(corpus), "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"evaluating random-llama ({random_model})" in result.output
    assert "run folder: " in result.output and "evaluating run-llama" in result.output
    assert "lh_passkey: skipped 5 rows longer than the 1,024-token context" in result.output

    summary = {m["label"]: m for m in json.loads((out / "summary.json").read_text())["models"]}
    assert set(summary) == {"random-llama", "run-llama"}
    for model in summary.values():
        assert model["max_length"] == CONTEXT
        # Chance of guessing a 5-digit key (or a 7-digit number) exactly: about zero.
        for task in RETRIEVAL_TASKS:
            assert model["metrics"][task]["acc"] <= 0.1, (task, model["metrics"][task])
            assert {(c["length"], c["depth"]) for c in model["retrieval"][task]} == {
                (n, d) for n in (512, 1024) for d in (0.0, 0.25, 0.5, 0.75, 1.0)}
            assert model["skipped"][task] == {"2048": 5}
        buckets = model["position_loss"]
        assert [b["end"] for b in buckets] == [32, 64, 128, 256, 512, 1024]
        assert all(4.0 < b["nll_per_token"] < 8.0 for b in buckets)  # ln 512 = 6.2 for random
        assert model["skipped"]["lh_position_loss"] == {"2048": 1}
        lm_eval_json = json.loads((out / model["label"] / "lm_eval_results.json").read_text())
        assert "lh_passkey" in lm_eval_json["results"]

    table = (out / "results.md").read_text()
    assert "| | random-llama | run-llama |" in table
    assert "| lh_passkey | 2,048 | skipped (5 > context) | skipped (5 > context) |" in table
    assert "| 512-1,024 |" in table
    for name in ("retrieval.png", "position_loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_copying_model_retrieves_every_key(random_model: Path, corpus: Path,
                                             tmp_path: Path) -> None:
    results = evaluate_lm(lm=CopyingLM(), label="copying", source="CopyingLM",
                          tokenizer_dir=random_model, max_length=CONTEXT, suite="long-context",
                          lengths=(512, 1024), data_dir=tmp_path, samples=2, data=(str(corpus),))
    for task in RETRIEVAL_TASKS:
        assert results.lm_eval["results"][task]["acc,none"] == 1.0, task
        assert len(results.retrieval[task]) == 10 and set(results.retrieval[task].values()) == {1.0}


def test_lm_eval_runs_the_tasks_from_the_include_path(random_model: Path, tmp_path: Path) -> None:
    """What `lm_eval --model hf --model_args pretrained=DIR --include_path evals --tasks
    lh_passkey --metadata '{...}'` does: the CLI merges model_args into the metadata."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_args = {"pretrained": str(random_model), "dtype": "float32"}
    manager = TaskManager(include_path=str(EVALS_DIR), include_defaults=False, metadata={
        **model_args, "lengths": [512], "samples": 1, "data_dir": str(tmp_path)})
    assert {"lh_long_context", "lh_passkey", "lh_position_loss"} <= set(manager.all_tasks)
    output = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=["lh_passkey"],
                                     task_manager=manager, device="cpu", batch_size=1)
    assert output["results"]["lh_passkey"]["acc,none"] == 0.0
    assert output["n-samples"]["lh_passkey"]["effective"] == 5  # one per depth at 512 tokens


def test_short_suite_without_its_datasets_is_one_line(random_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, ever
    started = time.monotonic()
    result = _cli("--model", str(random_model), "--suite", "short", "--out", str(tmp_path))
    assert time.monotonic() - started < 60
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the short suite needs hub datasets that are not cached")
    for fragment in ("Rowan/hellaswag", "allenai/ai2_arc (ARC-Easy)", "baber/piqa",
                     "datasets.load_dataset('Rowan/hellaswag')", "HF_DATASETS_CACHE"):
        assert fragment in lines[0]


def _fake_hub_dataset(path: str, name: str | None = None, **kwargs: object) -> datasets.DatasetDict:
    """Three rows in each split, with the columns lm-eval's hellaswag, arc_easy and piqa read."""
    rows = {
        "Rowan/hellaswag": {"ctx_a": "A man sits down.", "ctx_b": "he", "label": "1",
                            "activity_label": "Sitting",
                            "endings": ["stands.", "sits.", "runs.", "eats."]},
        "allenai/ai2_arc": {"question": "What is 1 + 1?", "answerKey": "B",
                            "choices": {"text": ["1", "2"], "label": ["A", "B"]}},
        "baber/piqa": {"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Sing.",
                       "label": 0},
    }[path]
    return datasets.DatasetDict({split: datasets.Dataset.from_list([rows] * 3)
                                 for split in ("train", "validation", "test")})


def test_short_suite_runs_lm_eval_standard_tasks(random_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring of the short suite, with its hub datasets replaced by three fake rows each."""
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub_dataset)
    monkeypatch.setattr(evaluate, "check_short_datasets", lambda **kwargs: None)
    out = tmp_path / "short"
    result = _cli("--model", str(random_model), "--suite", "short", "--limit", "2",
                  "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    output = json.loads((out / "random-llama" / "lm_eval_results.json").read_text())
    assert {task: counts["effective"] for task, counts in output["n-samples"].items()} == {
        "hellaswag": 2, "arc_easy": 2, "piqa": 2}
    table = (out / "results.md").read_text()
    for row in ("| hellaswag | acc_norm |", "| arc_easy | acc |", "| piqa | acc |"):
        assert row in table
    assert "Retrieval" not in table and not (out / "retrieval.png").exists()
