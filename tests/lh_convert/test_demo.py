"""The README's main job: `lh-convert demo` on built-in defaults, end to end, on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def test_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lh_convert.cli", "demo", "--workdir",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    for marker in ("[1/6]", "[3/6]", "max |logit diff| = 0", "[4/6]", "[5/6]", "[6/6]", "done in"):
        assert marker in done.stdout, (marker, done.stdout[-2000:])
    demo = tmp_path / "demo"
    for folder in ("real-exported", "tiny-exported"):
        config = json.loads((demo / folder / "config.json").read_text())
        assert "lighthouse" not in config and config["model_type"] == "llama"
    assert (demo / "tiny-run" / "loss.png").stat().st_size > 10_000
    metrics = [json.loads(line) for line in (demo / "tiny-run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert losses[-1] < losses[0] - 1.0, losses  # a random-init model learns fast at first
    assert {m["stage"] for m in metrics} == {"lighthouse", "dense"}
    print(f"demo took {seconds:.0f}s")
    assert seconds < 600, "the demo must finish within 10 minutes on a CPU-only machine"
