"""The benchmarks' CPU-checkable parts: the reference-check length, the CLI's GPU guard, and
the distributed training benchmark rehearsed on CPU processes (gloo, the tiny shape).

The rehearsal launches ``torchrun`` with 2 processes, data parallel and context parallel, and
checks the JSON rows; each row's first-step loss must equal a single process's on the same
batch (rank 0 of data parallelism, and the whole sequence under CP, reads the seed-0 batch),
within the 2e-5 the CP tests allow (float32; the ring's softmax merge order differs).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from lh_convert.bench.attention import check_length
from lh_convert.cli import main
from lighthouse_kernels import LighthouseConfig


@pytest.mark.parametrize("n, config", [
    (98304, LighthouseConfig(levels=3, pooling=2, topk=1536)),   # 32768 itself is not valid
    (262144, LighthouseConfig(levels=2, pooling=4, topk=4096)),
    (131072, LighthouseConfig(levels=2, pooling=8, topk=2048)),
    (65536, LighthouseConfig()),
    (524288, LighthouseConfig(topk=8192)),                       # needs more than 32768
])
def test_check_length_is_a_length_lighthouse_runs_at(n: int, config: LighthouseConfig) -> None:
    length = check_length(n, config)
    assert config.length_problem(length) is None
    assert length <= max(32768, n) and (length <= 32768 or length == n)


@pytest.mark.parametrize("command", [["bench", "attention"], ["bench", "train"]])
def test_benchmarks_need_a_gpu(command: list[str], assert_one_line_error) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the message on a machine without a GPU")
    result = CliRunner().invoke(main, command + ["--lengths", "32k"])
    assert_one_line_error(result, "needs a CUDA GPU")


REHEARSAL = ["bench", "train", "--device", "cpu", "--shape", "tiny", "--lengths", "1k",
             "--steps", "1", "--warmup", "1", "--no-compile"]
ATOL = 2e-5


def _rows(out: Path) -> dict[str, dict]:
    record = json.loads((out / "bench_train.json").read_text())
    assert (out / "bench_train.png").stat().st_size > 10_000  # the throughput plot
    return {row["mode"]: row for row in record["rows"]}


def _torchrun(out: Path, *options: str) -> tuple[dict[str, dict], str]:
    """``bench train`` under ``torchrun`` with 2 CPU processes: rows by mode, and stdout."""
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "lh_convert.cli", "--", *REHEARSAL, "--out", str(out), *options],
        capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launched.returncode == 0, launched.stderr[-4000:]
    return _rows(out), launched.stdout


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, dict]:
    """Both modes in this process (world 1, no process group): the losses to match."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU rehearsal runs on machines without CUDA")
    out = tmp_path_factory.mktemp("bench-single")
    result = CliRunner().invoke(main, REHEARSAL + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    return _rows(out)


@pytest.mark.parametrize("options, dp, cp, modes", [
    ([], 2, 1, ["lighthouse"]),
    (["--cp", "2", "--compile"], 1, 2, ["dense", "lighthouse"]),
], ids=["dp2", "cp2"])
def test_distributed_rehearsal_rows(options: list[str], dp: int, cp: int, modes: list[str],
                                    single_process: dict[str, dict], tmp_path: Path) -> None:
    if dp > 1:
        options = options + ["--modes", ",".join(modes)]
    rows, stdout = _torchrun(tmp_path, *options)
    assert sorted(rows) == modes
    for mode, row in rows.items():
        assert (row["world"], row["dp"], row["cp"], row["fsdp"], row["device"]) == \
            (2, dp, cp, True, "cpu")
        assert row["n"] == 1024 and row["peak_gib"] is None and row["compile"] is False
        assert row["step_s"] > 0
        assert math.isclose(row["tokens_per_s"], dp * 1024 / row["step_s"] / 2)
        assert abs(row["first_loss"] - single_process[mode]["first_loss"]) <= ATOL, mode
    if cp > 1:
        assert "context parallelism runs eagerly" in stdout
        assert stdout.count('"rows"') == 1  # only rank 0 prints the JSON line
        assert rows["lighthouse"]["first_loss"] != rows["dense"]["first_loss"]  # really sparse


def test_context_parallel_needs_processes_to_split_over(assert_one_line_error,
                                                      tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU rehearsal runs on machines without CUDA")
    result = CliRunner().invoke(main, REHEARSAL + ["--cp", "2", "--out", str(tmp_path)])
    assert_one_line_error(result, "--cp 2", "divide the 1 processes")
