"""Fixtures of the hardening tests: a tiny recipe writer and a small corpus."""

from __future__ import annotations

import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

TINY_RECIPE = """
name = "test"
description = "tiny"
model = "{model}"
ctx = "512"
[lighthouse]
levels = 2
pooling = 2
topk = 16
tile = 8
dense_layers = [0, -1]
[train]
micro_batch_size = 1
stage1_steps = {steps}
recovery_fraction = 0.5
lr = 3e-3
warmup_steps = 1
precision = "fp32"
loss_chunk = 128
checkpoint_every = 2
keep_checkpoints = {keep}
eval_every = 100
eval_batches = 1
"""


@pytest.fixture(scope="session")
def write_tiny_recipe() -> Callable[..., Path]:
    """``write_tiny_recipe(folder, model, *, steps=4, keep=3)``: a tiny recipe file, checkpoints
    every 2 steps."""

    def write(folder: Path, model: Path, *, steps: int = 4, keep: int = 3) -> Path:
        path = Path(folder) / "recipe.toml"
        path.write_text(TINY_RECIPE.format(model=model, steps=steps, keep=keep))
        return path

    return write


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """20 standard-library modules as .txt files."""
    folder = tmp_path_factory.mktemp("small-corpus")
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]:
        (folder / f"{source.stem}.txt").write_text(source.read_text(encoding="utf-8"))
    return folder
