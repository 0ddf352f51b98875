"""`--init random`: a source's architecture and tokenizer with fresh weights (training from
scratch), from a folder that holds no weights at all; and `plan` on such a folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from lh_convert.convert.settings import LighthouseSettings
from lh_convert.cli import main
from lh_convert.convert.manifest import read_manifest
from lh_convert.convert.surgery import convert

SETTINGS = LighthouseSettings(levels=2, pooling=2, topk=16, tile=8, dense_layers=(0, -1))


def _config_only(checkpoint: Path, folder: Path) -> Path:
    """A copy of `checkpoint` without its weights: config.json and the tokenizer files."""
    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("*.safetensors*"))
    assert not list(folder.glob("*.safetensors"))
    return folder


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(run_dir.glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def test_random_init_needs_no_weights_and_is_seeded(make_tiny_checkpoint, tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint("llama")
    source = _config_only(checkpoint, tmp_path / "config-only")
    first = convert(model=str(source), ctx=1024, out=tmp_path / "a", settings=SETTINGS,
                    init="random", seed=3)
    convert(model=str(source), ctx=1024, out=tmp_path / "b", settings=SETTINGS,
                    init="random", seed=3)
    other = convert(model=str(source), ctx=1024, out=tmp_path / "c", settings=SETTINGS,
                    init="random", seed=4)
    assert first.manifest.init == {"kind": "random", "seed": 3}
    assert read_manifest(tmp_path / "a").init == {"kind": "random", "seed": 3}
    assert other.manifest.target_context == 1024
    a, b, c = (_weights(tmp_path / name) for name in "abc")
    pretrained = load_file(checkpoint / "model.safetensors")
    assert a.keys() == b.keys() == c.keys() == pretrained.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed must give the same weights"
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(a[key], c[key]), "another seed must give other weights"
    assert not torch.equal(a[key], pretrained[key]), "random init must not copy the source"


def test_pretrained_conversion_still_needs_weights(make_tiny_checkpoint, tmp_path: Path,
                                                   assert_one_line_error) -> None:
    source = _config_only(make_tiny_checkpoint("llama"), tmp_path / "config-only")
    result = CliRunner().invoke(main, ["convert", "--model", str(source), "--ctx", "32k",
                                       "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "no *.safetensors files", str(source))
    assert not (tmp_path / "run").exists()


def test_convert_cli_random_init(make_tiny_checkpoint, tmp_path: Path) -> None:
    source = _config_only(make_tiny_checkpoint("qwen2"), tmp_path / "config-only")
    result = CliRunner().invoke(main, [
        "convert", "--model", str(source), "--ctx", "1k", "--out", str(tmp_path / "run"),
        "--init", "random", "--seed", "7", "--levels", "2", "--pooling", "2", "--topk", "16",
        "--tile", "8", "--dense-layers", "0,-1"])
    assert result.exit_code == 0, result.output
    assert "with random weights" in result.output
    assert read_manifest(tmp_path / "run").init == {"kind": "random", "seed": 7}


def test_plan_reads_a_folder_with_only_config_and_tokenizer(make_tiny_checkpoint,
                                                             tmp_path: Path) -> None:
    source = _config_only(make_tiny_checkpoint("llama"), tmp_path / "config-only")
    result = CliRunner().invoke(main, ["plan", "--model", str(source), "--ctx", "32k"])
    assert result.exit_code == 0, result.output
    assert "parameters    0.2M" in result.output and "theta 10000 ->" in result.output


RECIPE = """
name = "scratch"
description = "tiny, from scratch"
model = "{model}"
ctx = "512"
init = "random"
[lighthouse]
levels = 2
pooling = 2
topk = 16
tile = 8
dense_layers = [0, -1]
[train]
stage1_steps = 2
recovery_fraction = 0.5
warmup_steps = 1
precision = "fp32"
activation_checkpointing = false
loss_chunk = 128
eval_every = 100
eval_batches = 1
seed = 5
"""


def test_extend_from_scratch_records_the_init_and_refuses_a_mismatch(
        make_tiny_checkpoint, tmp_path: Path, assert_one_line_error) -> None:
    import sysconfig

    source = _config_only(make_tiny_checkpoint("llama"), tmp_path / "config-only")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for file in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:12]:
        (corpus / f"{file.stem}.txt").write_text(file.read_text(encoding="utf-8"))
    recipe = tmp_path / "scratch.toml"
    recipe.write_text(RECIPE.format(model=source))
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["extend", "--recipe", str(recipe), "--out", str(run),
                                       "--data", str(corpus)])
    assert result.exit_code == 0, result.output
    assert read_manifest(run).init == {"kind": "random", "seed": 5}  # the recipe's train.seed
    again = CliRunner().invoke(main, ["extend", "--recipe", str(recipe), "--out", str(run),
                                      "--init", "pretrained", "--data", str(corpus)])
    assert_one_line_error(again, "random weights, not pretrained", "new --out")
