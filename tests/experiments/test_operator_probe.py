"""experiments/replication/operator_probe.py on a tiny converted run: it swaps the operator the
model's attention calls (Lighthouse differs from dense; the contributor mean differs from the
spec's sum), writes its numbers, and refuses an unknown variant in one line. CPU, seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from lh_convert.cli import main

PROBE = Path(__file__).resolve().parents[2] / "experiments" / "replication" / "operator_probe.py"


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True,
                          timeout=300)


def test_probe_measures_each_operator(make_tiny_checkpoint, tmp_path: Path) -> None:
    run = tmp_path / "run"
    converted = CliRunner().invoke(main, [
        "convert", "--model", str(make_tiny_checkpoint("llama")), "--ctx", "512", "--out", str(run),
        "--rope", "none", "--levels", "2", "--pooling", "2", "--topk", "16", "--tile", "8",
        "--dense-layers", "0"])
    assert converted.exit_code == 0, converted.output
    data = tmp_path / "tokens"
    data.mkdir()
    np.random.default_rng(0).integers(0, 512, size=2 * 512, dtype=np.uint16).tofile(
        data / "validation.bin")

    done = _probe("--run", str(run), "--data", str(data), "--windows", "2",
                  "--out", str(tmp_path / "probe.json"))
    assert done.returncode == 0, done.stderr
    losses = json.loads((tmp_path / "probe.json").read_text())["losses"]
    assert set(losses) == {"dense", "lighthouse", "mean", "finest"}
    assert all(len(values) == 2 and all(np.isfinite(values)) for values in losses.values())
    assert abs(losses["lighthouse"][0] - losses["dense"][0]) > 1e-4
    assert abs(losses["mean"][0] - losses["lighthouse"][0]) > 1e-4
    # With L = 2 only positions with two contributors tell mean from finest, and a random
    # 4-layer model barely uses attention: the two differ, but by little.
    assert abs(losses["finest"][0] - losses["lighthouse"][0]) > 1e-4
    assert losses["finest"] != losses["mean"]

    refused = _probe("--run", str(run), "--data", str(data), "--variants", "dense,sparse")
    assert refused.returncode == 2
    assert "unknown --variants sparse; choose from dense, lighthouse, mean, finest" in refused.stderr
