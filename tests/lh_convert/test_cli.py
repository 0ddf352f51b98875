"""The command line: success paths, --help examples, and one-line errors for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lh_convert.cli import main

TINY_FLAGS = ["--levels", "2", "--pooling", "2", "--topk", "16", "--tile", "8"]
COMMANDS = ["convert", "export", "aliases", "doctor", "demo", "bench", "bench attention",
            "bench train", "extend", "recover", "plan", "eval"]


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _nothing_left(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], list(folder.iterdir())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_an_example(command: str) -> None:
    result = _run(*command.split(), "--help")
    assert result.exit_code == 0 and "Example" in result.output and "lh-convert " in result.output


def test_convert_and_export_through_the_cli(make_tiny_checkpoint, tmp_path: Path) -> None:
    source = make_tiny_checkpoint("qwen3")
    result = _run("convert", "--model", str(source), "--ctx", "2K", "--out", str(tmp_path / "run"),
                  *TINY_FLAGS, "--dense-layers", "0")
    assert result.exit_code == 0, result.output
    assert "Lighthouse: 3 of 4 layers, S = 1056 of N = 2048 tokens" in result.output
    result = _run("export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    assert "verified in a fresh process without lh_convert" in result.output
    _nothing_left(tmp_path)


def test_all_dense_conversion_warns(make_tiny_checkpoint, tmp_path: Path) -> None:
    result = _run("convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "1k",
                  "--out", str(tmp_path / "run"), *TINY_FLAGS)
    assert result.exit_code == 0
    assert "warning: every layer is dense" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without a GPU")
def test_bench_without_a_gpu_is_a_clear_error(tmp_path: Path, assert_one_line_error) -> None:
    result = _run("bench", "attention", "--lengths", "32k", "--out", str(tmp_path / "b"))
    assert_one_line_error(result, "needs a CUDA GPU")


def test_doctor_runs_the_probe() -> None:
    result = _run("doctor")
    assert result.exit_code == 0, result.output
    assert "probe        ok" in result.output and "transformers" in result.output


def test_missing_path(tmp_path: Path, assert_one_line_error) -> None:
    result = _run("convert", "--model", str(tmp_path / "nope"), "--ctx", "64k",
                  "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "run").exists()


def test_unsupported_architecture(make_tiny_checkpoint, tmp_path: Path,
                                  assert_one_line_error) -> None:
    result = _run("convert", "--model", str(make_tiny_checkpoint("gemma")), "--ctx", "1k",
                  "--out", str(tmp_path / "run"), *TINY_FLAGS)
    assert_one_line_error(result, "gemma", "llama", "mistral", "qwen2", "qwen3")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ctx", ["64kb", "sixty", "-4k", "0"])
def test_malformed_ctx(ctx: str, make_tiny_checkpoint, tmp_path: Path,
                       assert_one_line_error) -> None:
    result = _run("convert", "--model", str(make_tiny_checkpoint("llama")), f"--ctx={ctx}",
                  "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "--ctx")
    assert not (tmp_path / "run").exists()


def test_ctx_smaller_than_the_model(make_tiny_checkpoint, tmp_path: Path,
                                    assert_one_line_error) -> None:
    result = _run("convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "128",
                  "--out", str(tmp_path / "run"), *TINY_FLAGS)
    assert_one_line_error(result, "128", "256", "--ctx")


@pytest.mark.parametrize("flags,fragment", [
    (["--pooling", "3"], "pooling=3: needs a power of two"),
    (["--levels", "1"], "levels=1: needs levels >= 2"),
    (["--topk", "100"], "topk=100: needs a multiple of tile=128 (try topk=128)"),
    (["--tile", "4", "--pooling", "4"], "tile=4: needs tile/2 >= pooling=4 (try tile=8)"),
    (["--dense-layers", "0,9"], "dense layer 9 does not exist in a model of 4 layers"),
], ids=["pooling", "levels", "topk-multiple", "tile", "dense-layers"])
def test_impossible_lighthouse_parameters(flags: list[str], fragment: str, make_tiny_checkpoint,
                                          tmp_path: Path, assert_one_line_error) -> None:
    result = _run("convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "64k",
                  "--out", str(tmp_path / "run"), *flags)
    assert_one_line_error(result, "impossible Lighthouse parameters" if "dense" not in fragment
                           else "dense layer", fragment)


def test_too_short_context_suggests_a_topk_that_works(make_tiny_checkpoint, tmp_path: Path,
                                                      assert_one_line_error) -> None:
    source = str(make_tiny_checkpoint("llama"))
    result = _run("convert", "--model", source, "--ctx", "16k", "--out", str(tmp_path / "run"))
    assert_one_line_error(result, "too short", "try --topk")
    suggested = re.search(r"try --topk (\d+)", result.stderr).group(1)
    assert int(suggested) < 2048
    retry = _run("convert", "--model", source, "--ctx", "16k", "--out", str(tmp_path / "run"),
                 "--topk", suggested)
    assert retry.exit_code == 0, retry.output


def test_truncated_safetensors(make_tiny_checkpoint, tmp_path: Path, assert_one_line_error) -> None:
    source = make_tiny_checkpoint("llama", tmp_path / "src")
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = _run("convert", "--model", str(source), "--ctx", "1k", "--out", str(tmp_path / "run"),
                  *TINY_FLAGS)
    assert_one_line_error(result, "truncated or corrupt", "model.safetensors")
    assert not (tmp_path / "run").exists()


def test_truncated_run_shard_fails_export(make_tiny_checkpoint, tmp_path: Path,
                                          assert_one_line_error) -> None:
    source = make_tiny_checkpoint("llama")
    assert _run("convert", "--model", str(source), "--ctx", "1k", "--out", str(tmp_path / "run"),
                *TINY_FLAGS).exit_code == 0
    shard = next((tmp_path / "run").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])
    result = _run("export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "plain"))
    assert_one_line_error(result, "truncated or corrupt")
    assert not (tmp_path / "plain").exists()
    _nothing_left(tmp_path)


def test_unwritable_output_folder(make_tiny_checkpoint, tmp_path: Path,
                                  assert_one_line_error) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _run("convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "1k",
                  "--out", str(blocker / "run"), *TINY_FLAGS)
    assert_one_line_error(result, "is a file, not a folder", "--out")


def test_existing_output_folder_is_never_overwritten(make_tiny_checkpoint, tmp_path: Path,
                                                     assert_one_line_error) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    result = _run("convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "1k",
                  "--out", str(tmp_path / "run"), *TINY_FLAGS)
    assert_one_line_error(result, "already exists")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


def test_export_of_a_folder_that_is_not_a_run(tmp_path: Path, assert_one_line_error) -> None:
    (tmp_path / "random").mkdir()
    result = _run("export", "--run", str(tmp_path / "random"), "--out", str(tmp_path / "plain"))
    assert_one_line_error(result, "not an lh-convert run folder")
