"""Fixtures of the hardening tests: a tiny recipe writer and a small corpus."""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

TINY_LIGHTHOUSE = {"levels": 2, "pooling": 2, "topk": 16, "tile": 8, "dense_layers": [0, -1]}
TINY_TRAIN = {"micro_batch_size": 1, "stage1_steps": 4, "recovery_fraction": 0.5, "lr": 3e-3,
              "warmup_steps": 1, "precision": "fp32", "loss_chunk": 128, "checkpoint_every": 2,
              "keep_checkpoints": 3, "eval_every": 100, "eval_batches": 1}


@pytest.fixture(scope="session")
def write_tiny_recipe() -> Callable[..., Path]:
    """``write_tiny_recipe(folder, model, *, steps=4, keep=3, **train)``: a tiny recipe file
    (512 tokens, 2 levels, checkpoints every 2 steps); ``train`` overrides ``[train]`` fields."""

    def write(folder: Path, model: Path, *, steps: int = 4, keep: int = 3, **train) -> Path:
        fields = {**TINY_TRAIN, "stage1_steps": steps, "keep_checkpoints": keep, **train}
        lines = ['name = "test"', 'description = "tiny"', f'model = "{model}"', 'ctx = "512"',
                 "[lighthouse]", *(f"{k} = {json.dumps(v)}" for k, v in TINY_LIGHTHOUSE.items()),
                 "[train]", *(f"{k} = {json.dumps(v)}" for k, v in fields.items())]
        path = Path(folder) / "recipe.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    return write


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """20 standard-library modules as .txt files."""
    folder = tmp_path_factory.mktemp("small-corpus")
    for source in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]:
        (folder / f"{source.stem}.txt").write_text(source.read_text(encoding="utf-8"))
    return folder
