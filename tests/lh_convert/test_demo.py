"""The README's main job: `lh-convert demo` on built-in defaults, end to end, on the CPU.

It asserts what the demo produced, not how fast: a slower machine passes too (about 8
minutes on an idle 2-core CPU, 11 on a busy one)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest


# The console script the install made, run as the README's demo command writes it.
LH_CONVERT = Path(sys.executable).with_name("lh-convert")


def _demo_command(folder: Path) -> dict:
    return {"args": [str(LH_CONVERT), "demo"], "cwd": folder}


# The demo is one subprocess of several minutes: it starts right after collection and runs
# beside the rest of the suite; this test runs last (tests/conftest.py: started_early).
@pytest.mark.started_early(command=_demo_command)
def test_demo_runs_the_whole_pipeline(started_early) -> None:
    done = started_early.wait(timeout=3000)
    tmp_path = started_early.folder
    assert done.returncode == 0, done.stderr[-3000:]
    for marker in ("[1/6]", "[3/6]", "max |logit diff| = 0", "[4/6]", "[5/6]", "[6/6]", "done in"):
        assert marker in done.stdout, (marker, done.stdout[-2000:])
    demo = tmp_path / "lh-demo"  # the default folder
    for folder in ("real-exported", "tiny-exported"):
        config = json.loads((demo / folder / "config.json").read_text())
        assert "lighthouse" not in config and config["model_type"] == "llama"
        assert (demo / folder / "README.md").is_file() and (demo / folder / "tokenizer.json").is_file()
    assert (demo / "tiny-run" / "loss.png").stat().st_size > 10_000
    metrics = [json.loads(line) for line in (demo / "tiny-run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert losses[-1] < losses[0] - 1.0, losses  # a random-init model learns fast at first
    assert {m["stage"] for m in metrics} == {"lighthouse", "dense"}
    # The closing line reports the held-out losses the log holds (not single training batches).
    evals = [m for m in metrics if m["kind"] == "eval"]
    stage1 = [m["val_loss"] for m in evals if m["stage"] == "lighthouse"][-1]
    recovered = [m["val_loss"] for m in evals if m["stage"] == "dense"][-1]
    said = re.search(r"validation loss (\d+\.\d+) at the end of stage 1 \(Lighthouse\), "
                     r"(\d+\.\d+) with the same weights under dense attention, (\d+\.\d+) after "
                     r"recovery", done.stdout)
    assert said, done.stdout[-2000:]
    assert float(said.group(1)) == round(stage1, 3) and float(said.group(3)) == round(recovered, 3)
