"""No custom code and no pickles: real custom-code folders and a real malicious pickle are
refused in one line by convert and eval, and their code never runs."""

from __future__ import annotations

import json
import logging
import pathlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lh_convert.cli import main
from lh_convert.util import hf_load, verbosity
from lh_convert.util.errors import LhConvertError

TINY_FLAGS = ["--levels", "2", "--pooling", "2", "--topk", "16", "--tile", "8"]


def _custom_code_folder(source: Path, tmp_path: Path, *, where: str) -> tuple[Path, Path]:
    """A copy of a tiny checkpoint whose ``where`` file names a module that, if imported,
    writes a marker file; returns (folder, marker)."""
    import shutil

    folder = tmp_path / f"custom-{where.split('.')[0]}"
    shutil.copytree(source, folder)
    marker = tmp_path / "custom-code-ran"
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import LlamaConfig as EvilConfig\n"
                                    "from transformers import LlamaForCausalLM as EvilModel\n"
                                    "from transformers import PreTrainedTokenizerFast as EvilTok\n")
    file = folder / where
    raw = json.loads(file.read_text())
    raw["auto_map"] = ({"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
                       if where == "config.json" else {"AutoTokenizer": ["evil.EvilTok", None]})
    file.write_text(json.dumps(raw))
    return folder, marker


@pytest.mark.parametrize("where", ["config.json", "tokenizer_config.json"])
def test_convert_and_eval_refuse_custom_code_and_never_run_it(
        make_tiny_checkpoint, tmp_path: Path, where: str, assert_one_line_error) -> None:
    folder, marker = _custom_code_folder(make_tiny_checkpoint("llama"), tmp_path, where=where)
    runner = CliRunner()
    converted = runner.invoke(main, ["convert", "--model", str(folder), "--ctx", "1k", "--out",
                                     str(tmp_path / "run"), *TINY_FLAGS], input="y\ny\n")
    assert_one_line_error(converted, "auto_map", where)
    evaluated = runner.invoke(main, ["eval", "--model", str(folder), "--lengths", "128", "--out",
                                     str(tmp_path / "eval")], input="y\ny\n")
    assert_one_line_error(evaluated, "auto_map", where)
    baseline = runner.invoke(main, ["eval", "--model", str(make_tiny_checkpoint("llama")),
                                    "--baseline", str(folder), "--lengths", "128",
                                    "--out", str(tmp_path / "eval2")], input="y\ny\n")
    assert baseline.exit_code == 2
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_every_load_passes_trust_remote_code_false(make_tiny_checkpoint, tmp_path: Path,
                                                   monkeypatch) -> None:
    """Even past the refusal (switched off here), transformers is told not to run the code."""
    folder, marker = _custom_code_folder(make_tiny_checkpoint("llama"), tmp_path,
                                         where="config.json")
    monkeypatch.setattr(hf_load, "refuse_custom_code", lambda folder: None)
    monkeypatch.setattr("builtins.input", lambda *args: "y")
    for load in (hf_load.load_config, hf_load.load_causal_lm):
        try:
            load(folder)
        except Exception:  # noqa: BLE001 - refused by transformers, or loaded the plain class
            pass
    assert not marker.exists()


def test_refusal_names_the_file(make_tiny_checkpoint, tmp_path: Path) -> None:
    folder, _ = _custom_code_folder(make_tiny_checkpoint("llama"), tmp_path, where="config.json")
    with pytest.raises(LhConvertError, match=r"config\.json has auto_map \(AutoConfig, "
                                             r"AutoModelForCausalLM\)"):
        hf_load.refuse_custom_code(folder)


class _Trap:
    """Unpickling this touches ``MARKER``: the shape of a malicious pytorch_model.bin."""

    marker: Path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_eval_refuses_a_pickled_checkpoint(make_tiny_checkpoint, tmp_path: Path,
                                           assert_one_line_error) -> None:
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(make_tiny_checkpoint("llama"), folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pickle-ran"
    trap = _Trap()
    trap.marker = marker
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "trap": trap},
               folder / "pytorch_model.bin")
    result = CliRunner().invoke(main, ["eval", "--model", str(folder), "--lengths", "128",
                                       "--out", str(tmp_path / "eval")])
    assert_one_line_error(result, "no *.safetensors files", "pickled")
    assert not marker.exists()
    converted = CliRunner().invoke(main, ["convert", "--model", str(folder), "--ctx", "1k",
                                          "--out", str(tmp_path / "run"), *TINY_FLAGS])
    assert_one_line_error(converted, "no *.safetensors files")
    assert not marker.exists()


def test_load_report_is_quiet_above_our_error(make_tiny_checkpoint, tmp_path: Path,
                                              assert_one_line_error) -> None:
    """A checkpoint missing tensors: one line of ours, not transformers' LOAD REPORT table."""
    folder = make_tiny_checkpoint("llama", tmp_path / "short")
    raw = json.loads((folder / "config.json").read_text())
    raw["num_hidden_layers"] = 5
    (folder / "config.json").write_text(json.dumps(raw))
    result = CliRunner().invoke(main, ["convert", "--model", str(folder), "--ctx", "1k",
                                       "--out", str(tmp_path / "run"), *TINY_FLAGS])
    assert_one_line_error(result, "missing tensors")
    assert "LOAD REPORT" not in result.output


class _Records(logging.Handler):
    """Every record transformers' loggers emit while attached (they all propagate to
    ``transformers``, whose own handler keeps the stream it found at import)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def restore_verbosity(monkeypatch):
    for variable in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY",
                     "HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(variable, raising=False)
    yield verbosity.set_verbosity
    verbosity.set_verbosity(0, explicit=False)


def _load_records(folder: Path) -> list[logging.LogRecord]:
    handler = _Records()
    logging.getLogger("transformers").addHandler(handler)
    try:
        hf_load.load_causal_lm(folder)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    return handler.records


@pytest.mark.parametrize("level", [0, 1])
def test_transformers_load_report_only_from_dash_v(make_tiny_checkpoint, tmp_path: Path,
                                                   restore_verbosity, level: int) -> None:
    """A real load of a checkpoint missing a layer's tensors: at the default, no record of
    transformers' reaches its handlers; at -v its info messages and its LOAD REPORT do."""
    folder = make_tiny_checkpoint("llama", tmp_path / "short")
    raw = json.loads((folder / "config.json").read_text())
    raw["num_hidden_layers"] = 5
    (folder / "config.json").write_text(json.dumps(raw))
    restore_verbosity(level)
    records = _load_records(folder)
    if level == 0:
        assert records == []
    else:
        assert any(r.levelno == logging.INFO and "loading weights file" in r.getMessage()
                   for r in records)
        assert any("LOAD REPORT" in r.getMessage() for r in records)


@pytest.mark.parametrize("level", [-1, 0, 1, 2])
def test_quiet_transformers_follows_the_verbosity_setting(restore_verbosity,
                                                          level: int) -> None:
    from transformers.utils import logging as transformers_logging

    restore_verbosity(level)
    expected = {-1: logging.ERROR, 0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}[level]
    with hf_load.quiet_transformers():
        assert transformers_logging.get_verbosity() == expected
        assert transformers_logging.is_progress_bar_enabled() == (level >= 1)
    assert transformers_logging.is_progress_bar_enabled() == (level >= 1)
