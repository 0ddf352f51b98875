"""An eval that fits the machine: lengths chosen from the device, the request count and a
time estimate before lm-eval starts, --limit/--samples in results.md, and an evaluation
interrupted part-way that resumes from lm-eval's request cache, running only what was left."""

from __future__ import annotations

import functools
import inspect
import json
import string
import textwrap
from pathlib import Path

import pytest
from lm_eval.models.huggingface import HFLM

from lh_convert.evaluate.budget import DEFAULT_LENGTHS, default_lengths
from lh_convert.evaluate.runner import run_eval

CONTEXT = 1024


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, module in zip("abc", (textwrap, string, inspect)):
        (folder / f"{name}.txt").write_text(inspect.getsource(module)[:20000])
    return folder


@pytest.fixture(scope="module")
def tiny_model(make_tiny_checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint("llama", tmp_path_factory.mktemp("models") / "tiny-llama",
                                max_position_embeddings=CONTEXT)


def _count_model_calls(monkeypatch: pytest.MonkeyPatch, *, interrupt_at: int | None = None
                       ) -> dict[str, int]:
    calls = {"n": 0}
    real = HFLM._model_call

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == interrupt_at:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_call", counted)
    return calls


def _eval(model: Path, corpus: Path, out: Path, said: list[str]):
    return run_eval(model=model, out=out, lengths=(512,), samples=1, data=(str(corpus),),
                    device="cpu", echo=said.append)


def test_default_lengths_fit_the_device() -> None:
    assert default_lengths("cpu") == DEFAULT_LENGTHS["cpu"] and max(default_lengths("cpu")) <= 2048
    assert default_lengths("cuda") == (4096, 8192, 16384, 32768)


def test_an_interrupted_eval_resumes_from_its_cache(tiny_model: Path, corpus: Path,
                                                    tmp_path: Path, monkeypatch) -> None:
    said: list[str] = []
    straight = _count_model_calls(monkeypatch)
    _eval(tiny_model, corpus, tmp_path / "straight", said)
    total = straight["n"]
    estimate = next(line for line in said if " requests (" in line)
    assert "lh_passkey 5" in estimate and "about " in estimate and "tokens" in estimate
    assert said.index(estimate) < len(said) - 1  # said before the results
    reference = json.loads((tmp_path / "straight" / "summary.json").read_text())["models"][0]
    assert total > 10

    said = []
    out = tmp_path / "interrupted"
    _count_model_calls(monkeypatch, interrupt_at=7)
    with pytest.raises(KeyboardInterrupt):
        _eval(tiny_model, corpus, out, said)
    assert said[-1].startswith("interrupted: 6 finished requests are cached in ")
    assert not (out / "summary.json").exists()

    said = []
    resumed = _count_model_calls(monkeypatch)
    _eval(tiny_model, corpus, out, said)
    assert resumed["n"] == total - 6  # only what had not finished ran
    assert any("6 already cached" in line for line in said), said
    again = json.loads((out / "summary.json").read_text())["models"][0]
    assert again["metrics"] == reference["metrics"]
    assert again["position_loss"] == reference["position_loss"]


def test_results_md_records_limit_and_samples(tiny_model: Path, corpus: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "limited"
    run_eval(model=tiny_model, out=out, lengths=(512,), samples=1, limit=2, data=(str(corpus),),
             device="cpu", echo=lambda line: None)
    table = (out / "results.md").read_text()
    assert ("Settings: lengths 512 tokens; --samples 1 rows per (length, depth) cell; "
            "--limit 2 (at most 2 rows per task).") in table


def test_lm_evals_git_probe_is_quiet_outside_a_repository(tmp_path, monkeypatch, capfd) -> None:
    """lm-eval runs `git describe` with the terminal as stderr: "fatal: not a git repository"
    above every eval run outside a repository. During our evaluation it is quiet, and the
    library's own function is back afterwards."""
    import lm_eval.evaluator

    from lh_convert.evaluate.runner import quiet_git_probe

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    original = lm_eval.evaluator.get_git_commit_hash
    original()
    assert "not a git repository" in capfd.readouterr().err  # the noise being removed
    with quiet_git_probe():
        assert lm_eval.evaluator.get_git_commit_hash() is None
    assert capfd.readouterr().err == ""
    assert lm_eval.evaluator.get_git_commit_hash is original


def test_quiet_request_bars_pass_disable_tqdm_to_every_request_type() -> None:
    """Under -q lm-eval's per-request progress bars are switched off through the argument its
    HFLM methods take (its evaluator calls them with the requests alone)."""
    from lh_convert.evaluate.runner import REQUEST_METHODS, quiet_request_bars

    for name in REQUEST_METHODS:  # the library still takes the argument we pass
        assert "disable_tqdm" in inspect.signature(getattr(HFLM, name)).parameters

    class Model:
        def __init__(self) -> None:
            self.seen = {}

        def _call(self, name, requests, disable_tqdm=False):
            self.seen[name] = disable_tqdm
            return requests

    model = Model()
    for name in REQUEST_METHODS:
        setattr(model, name, functools.partial(model._call, name))
    quiet_request_bars(model)
    for name in REQUEST_METHODS:
        assert getattr(model, name)([]) == [] and model.seen[name] is True


def test_lm_evals_metadata_hint_is_dropped_below_verbose(caplog, monkeypatch) -> None:
    """The hint names RULER's `max_seq_lengths`, a key our tasks do not read; other warnings of
    the same logger still pass, and -v shows the hint again."""
    import logging

    from lh_convert.evaluate.runner import without_metadata_hint
    from lh_convert.util import verbosity

    logger = logging.getLogger("lm_eval.api.task")
    hint = "lh_niah: Custom kwargs can be passed to `--metadata` in console (as json string)"
    with caplog.at_level(logging.WARNING, logger="lm_eval.api.task"):
        with without_metadata_hint():
            logger.warning(hint)
            logger.warning("another warning")
        monkeypatch.setattr(verbosity, "_current", 1)  # -v
        with without_metadata_hint():
            logger.warning(hint)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["another warning", hint]
