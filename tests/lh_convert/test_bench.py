"""The benchmarks' CPU-checkable parts: the reference-check length and the CLI's GPU guard."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from lh_convert.bench_attention import check_length
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
