"""Each input that once printed a traceback is refused in one line (exit status 2) that names
the field or file and the fix; outputs get the permissions the umask asks for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from lh_convert.cli import main

TINY_FLAGS = ["--pooling", "2", "--topk", "16", "--tile", "8"]
HEAD = 'name = "t"\ndescription = "d"\nmodel = "./tiny"\nctx = "512"\n'


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("body, fragments", [
    ('[lighthouse]\nlevels = "two"\n', ["field levels = 'two' must be an integer"]),
    ('[lighthouse]\nlevels = 2.0\n', ["field levels = 2.0 must be an integer"]),
    ('[lighthouse]\nlevels = 100000\n', ["levels=100000", "use levels between 2 and"]),
    ('[lighthouse]\ndense_layers = "0,-1"\n', ["field dense_layers = '0,-1'",
                                               "a list of integers, e.g. [0, 1, -2, -1]"]),
    ('train = "fast"\n', ["[train] must be a table of settings", "not 'fast'"]),
    ('[lighthouse]\nbogus = 1\n', ["[lighthouse]: unknown field(s) bogus", "allowed: combine"]),
    ('ctx = "99999999999999999999999999"\n'.replace("ctx", "ctx2"), ["unknown field(s) ctx2"]),
], ids=["levels-two", "levels-float", "levels-huge", "dense-layers-string", "train-string",
        "unknown-key", "unknown-top-level"])
def test_recipe_errors_name_the_field_and_fix(tmp_path: Path, body: str, fragments: list[str],
                                              assert_one_line_error) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(HEAD + body)
    assert_one_line_error(_run("plan", "--recipe", str(recipe)), *fragments)


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path: Path, assert_one_line_error) -> None:
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes((HEAD + '# caf\xe9\n').encode("latin-1"))
    assert_one_line_error(_run("plan", "--recipe", str(recipe)), "is not UTF-8 text",
                          "save it as UTF-8")


def test_huge_levels_and_context_are_refused(make_tiny_checkpoint, tmp_path: Path,
                                             assert_one_line_error) -> None:
    model = str(make_tiny_checkpoint("llama"))
    result = _run("convert", "--model", model, "--ctx", "1k", "--out", str(tmp_path / "a"),
                  "--levels", "100000", *TINY_FLAGS)
    assert_one_line_error(result, "levels=100000", "use levels between 2 and 25")
    result = _run("convert", "--model", model, "--ctx", "1" + "0" * 26, "--out",
                  str(tmp_path / "b"), "--levels", "2", *TINY_FLAGS)
    assert_one_line_error(result, "more than the 16,777,216 lh-convert accepts")
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_parquet_is_one_line_before_converting(make_tiny_checkpoint, tmp_path: Path,
                                                         assert_one_line_error) -> None:
    bad = tmp_path / "data" / "part-0.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"PAR1" + os.urandom(200) + b"PAR1")
    result = _run("extend", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "512",
                  "--out", str(tmp_path / "run"), "--data", str(bad.parent), "--steps", "1")
    assert_one_line_error(result, "part-0.parquet is not a readable parquet file")
    assert not (tmp_path / "run").exists()


def test_eval_out_naming_a_file_is_one_line(make_tiny_checkpoint, tmp_path: Path,
                                            assert_one_line_error) -> None:
    (tmp_path / "results").write_text("not a folder")
    result = _run("eval", "--model", str(make_tiny_checkpoint("llama")), "--out",
                  str(tmp_path / "results"), "--lengths", "1k")
    assert_one_line_error(result, "is a file, not a folder")
    result = _run("eval", "--model", str(make_tiny_checkpoint("llama")), "--out",
                  str(tmp_path / "results" / "inner"), "--lengths", "1k")
    assert_one_line_error(result, "is a file, not a folder")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(make_tiny_checkpoint, tmp_path: Path, umask: int,
                                        mode: int) -> None:
    model = str(make_tiny_checkpoint("llama"))
    before = os.umask(umask)
    try:
        result = _run("convert", "--model", model, "--ctx", "1k", "--out", str(tmp_path / "run"),
                      "--levels", "2", *TINY_FLAGS, "--dense-layers", "0")
        assert result.exit_code == 0, result.output
        result = _run("export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "out"),
                      "--no-verify")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(before)
    for folder in (tmp_path / "run", tmp_path / "out"):
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}
        assert modes["model.safetensors"] == mode and set(modes.values()) == {mode}, modes


def test_disk_full_anywhere_is_one_line(make_tiny_checkpoint, tmp_path: Path,
                                        monkeypatch) -> None:
    """A full disk outside the atomic writers (here the metrics log) still prints one line."""
    from lh_convert.train import metrics

    def full_disk(run_dir, record):
        raise OSError(28, "No space left on device", str(Path(run_dir) / "metrics.jsonl"))

    monkeypatch.setattr(metrics, "append_metrics", full_disk)
    monkeypatch.setattr("lh_convert.train.trainer.append_metrics", full_disk)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("some text to train on\n" * 400)
    (data / "b.txt").write_text("other text held out\n" * 400)
    recipe = tmp_path / "r.toml"
    recipe.write_text(HEAD.replace("./tiny", str(make_tiny_checkpoint("llama")))
                      + "[lighthouse]\nlevels = 2\npooling = 2\ntopk = 16\ntile = 8\n"
                      + '[train]\nstage1_steps = 1\nprecision = "fp32"\nwarmup_steps = 0\n'
                      + "loss_chunk = 128\neval_batches = 1\n")
    result = _run("extend", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--data",
                  str(data))
    assert result.exit_code == 2 and "Traceback" not in result.stderr  # above it: progress bars
    last = result.stderr.strip().splitlines()[-1]
    assert f"error: the disk holding {tmp_path / 'run'} is full" in last, result.stderr
