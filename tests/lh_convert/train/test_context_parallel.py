"""Context parallelism on CPU with gloo, 2 and 4 processes (lh_convert/train/context_parallel.py).

The distributed checks run under torchrun (this file is the script, one launch per process
count); each process computes the single-process answer itself (same seed) and compares its
own shard. Tolerance: float32, 2e-5 absolute on outputs,
losses and gradients (measured differences are about 1e-6): the ring merges per-block
softmax results in a different order than one SDPA call, nothing else differs.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from lh_convert.convert.attention import ATTENTION_NAME, CALLS, LIGHTHOUSE
from lh_convert.convert.settings import LighthouseSettings
from lh_convert.cli import main
from lh_convert.train.context_parallel import (
    check_context_parallel,
    context_parallel_loss,
    enable_context_parallel,
    lighthouse_context_parallel,
    plan_context_parallel,
    ring_attention,
    shard_batch,
    unshard,
)
from lh_convert.util.errors import LhConvertError
from lh_convert.train.loss import causal_lm_loss
from lh_convert.train.recipes import load_recipe
from lighthouse_kernels import LighthouseConfig, dense_causal_attention, lighthouse_attention

ATOL = 2e-5
EOS = 1
# Budgets whose topk/tile (8 tiles) splits over 2*cp chunks for cp = 2 and 4.
TINY_L2 = LighthouseConfig(levels=2, pooling=2, topk=32, tile=4)
TINY_L3 = LighthouseConfig(levels=3, pooling=2, topk=32, tile=4)


@dataclass(frozen=True)
class Launch:
    """One torchrun launch of this file running several checks in order; rank 0 writes a marker
    after each check that every rank finished (a barrier), so one failure fails only the checks
    from there on, each test showing the processes' output."""

    folder: Path
    output: str

    def assert_passed(self, check: str) -> None:
        assert (self.folder / check).exists(), f"check {check!r} did not pass:\n{self.output}"


def _launch(world: int, checks: list[str], folder: Path) -> Launch:
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         str(world), __file__, str(folder), *checks],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in launched.stderr.splitlines() if line.startswith("[rank")]
    return Launch(folder=folder, output="\n".join(errors[-60:]) or launched.stderr[-4000:])


def _local(tensor: torch.Tensor, *, cp: int, rank: int, dim: int) -> torch.Tensor:
    """Chunks ``rank`` and ``2*cp-1-rank`` of ``2*cp``: the layout the module must produce."""
    chunks = tensor.chunk(2 * cp, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * cp - 1 - rank]], dim=dim)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    error = (actual - expected).abs().max().item()
    assert error <= ATOL, f"{what}: max abs error {error:.3g} on rank {dist.get_rank()}"


# ---- operators: ring attention and Lighthouse on shards vs one process -------------------------


def _check_operator(attend, reference, *, cp: int, rank: int, n: int) -> None:
    torch.manual_seed(0)
    query = torch.randn(2, 4, n, 16, requires_grad=True)
    key, value = (torch.randn(2, 2, n, 16, requires_grad=True) for _ in range(2))
    expected = reference(query, key, value)
    grad_out = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (query, key, value), grad_out)
    shards = [_local(t, cp=cp, rank=rank, dim=2).detach().requires_grad_() for t in (query, key, value)]
    out = attend(*shards)
    grads = torch.autograd.grad(out, shards, _local(grad_out, cp=cp, rank=rank, dim=2))
    _close(out, _local(expected, cp=cp, rank=rank, dim=2), "output")
    for name, grad, full in zip("qkv", grads, expected_grads):
        _close(grad, _local(full, cp=cp, rank=rank, dim=2), f"d{name}")


def check_operators() -> None:
    """Ring attention and Lighthouse on shards (cp = all processes) vs one process, GQA."""
    plan = plan_context_parallel(cp=dist.get_world_size(), seq_len=128, model_config=_tiny_model([0]).config,
                     device_type="cpu")
    cp, rank = plan.cp, plan.cp_rank
    _check_operator(lambda q, k, v: ring_attention(q, k, v, group=plan.group, scale=0.3),
                    lambda q, k, v: dense_causal_attention(q, k, v, scale=0.3),
                    cp=cp, rank=rank, n=64)
    for config, n in ((TINY_L2, 64), (TINY_L3, 128)):
        assert config.length_problem(n) is None  # the single process really runs Lighthouse
        check_context_parallel(world=cp, cp=cp, seq_len=n, lighthouse=config)
        _check_operator(
            lambda q, k, v: lighthouse_context_parallel(q, k, v, config=config, cp=cp, cp_rank=rank,
                                                        group=plan.group),
            lambda q, k, v: lighthouse_attention(q, k, v, config=config), cp=cp, rank=rank, n=n)



# ---- the model: loss, late loss and gradients vs one process -----------------------------------


def _tiny_model(dense_layers: list[int]) -> LlamaForCausalLM:
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         attn_implementation=ATTENTION_NAME)
    config.lighthouse = LighthouseSettings(levels=2, pooling=2, topk=32, tile=4,
                                           dense_layers=tuple(dense_layers)).to_dict()
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _packed_batch(batch: int, n: int, seed: int) -> torch.Tensor:
    """Documents of random lengths joined by EOS, as the data pipeline packs them."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 512, (batch, n), generator=generator)
    ends = torch.randint(0, n, (batch, 4), generator=generator)
    return ids.scatter(1, ends, EOS)


def _check_model(dense_layers: list[int]) -> None:
    """cp = 2 (and dp = the rest): loss, late loss and gradients vs one process on each dp
    replica's batch; with dp > 1, FSDP2 shards over all dp*cp ranks as training does."""
    n = 64
    model = _tiny_model(dense_layers)
    reference = copy.deepcopy(model)
    wrapper = context_parallel_loss(model, cp=2, seq_len=n, chunk=16, device_type="cpu")
    plan = wrapper.plan
    batches = [_packed_batch(2, n, seed) for seed in range(plan.dp)]
    CALLS.reset()
    losses = [causal_lm_loss(reference, ids, chunk=16, late_fraction=0.25) for ids in batches]
    lighthouse_calls = sum(c for (_, path), c in CALLS.counts.items() if path == LIGHTHOUSE)
    assert lighthouse_calls == len(batches) * (4 - len(dense_layers))
    torch.stack([loss for loss, _ in losses]).mean().backward()  # FSDP2 averages over dp

    if plan.dp > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)  # over all dp*cp ranks, as training shards
        fully_shard(wrapper)
    loss, late = wrapper(batches[plan.dp_rank], late_fraction=0.25)
    loss.backward()
    expected_loss, expected_late = losses[plan.dp_rank]
    _close(loss.detach(), expected_loss.detach(), "loss")
    _close(late, expected_late, "late-position loss")
    for (name, param), (_, expected) in zip(model.named_parameters(), reference.named_parameters()):
        if plan.dp > 1:
            grad = param.grad.full_tensor()  # FSDP2 averaged it over all dp*cp ranks
        else:
            grad = param.grad.clone()
            dist.all_reduce(grad, op=dist.ReduceOp.AVG)
        _close(grad, expected.grad, f"gradient of {name}")



def check_dense_stage() -> None:
    _check_model([0, 1, 2, 3])


def check_lighthouse_stage() -> None:
    _check_model([0, -1])


# ---- packed documents ----------------------------------------------------------------------------


def check_packed_documents() -> None:
    """CP attends across EOS exactly as one process does (positions never reset), and a change
    in the first document reaches later documents on the other rank."""
    n = 64
    model = _tiny_model([0, -1])
    reference = copy.deepcopy(model)
    plan = plan_context_parallel(cp=2, seq_len=n, model_config=model.config, device_type="cpu")
    enable_context_parallel(model, plan=plan)
    batch = torch.tensor([list(range(2, 12)) + [EOS] + list(range(100, 153))])
    edited = batch.clone()
    edited[0, :10] = 7  # only the first document (chunk 0, rank 0)
    hidden = {}
    with torch.no_grad():
        for name, ids in (("original", batch), ("edited", edited)):
            shard = shard_batch(ids, plan=plan)
            assert torch.equal(shard.position_ids, _local(torch.arange(n)[None], cp=2,
                                                          rank=plan.cp_rank, dim=1))
            local = model.model(input_ids=shard.input_ids, position_ids=shard.position_ids,
                                use_cache=False).last_hidden_state
            hidden[name] = unshard(local, plan=plan)
            _close(hidden[name], reference.model(input_ids=ids, use_cache=False).last_hidden_state,
                   f"{name} hidden states")
    later_document = (hidden["original"] - hidden["edited"])[0, 11:].abs().amax(dim=-1)
    assert (later_document > 1e-4).all(), "every later position sees the first document"


TWO_PROCESSES = ["check_operators", "check_dense_stage", "check_lighthouse_stage",
                 "check_packed_documents"]
FOUR_PROCESSES = ["check_operators", "check_lighthouse_stage"]  # cp=4; then dp=2 x cp=2, FSDP2


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    return _launch(2, TWO_PROCESSES, tmp_path_factory.mktemp("cp2"))


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory: pytest.TempPathFactory) -> Launch:
    return _launch(4, FOUR_PROCESSES, tmp_path_factory.mktemp("cp4"))


@pytest.mark.parametrize("check", TWO_PROCESSES)
def test_two_processes_equal_one(check: str, two_processes: Launch) -> None:
    two_processes.assert_passed(check)


@pytest.mark.parametrize("check", FOUR_PROCESSES)
def test_four_processes_equal_one(check: str, four_processes: Launch) -> None:
    four_processes.assert_passed(check)


# ---- bad settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(("world", "cp", "seq_len", "lighthouse", "fragment"), [
    (4, 3, 64, None, "--cp 3 must be >= 1 and divide the 4 processes"),
    (4, 0, 64, None, "--cp 0 must be >= 1"),
    (4, 4, 60, None, "does not split into 2*cp = 8"),
    (8, 8, 64, TINY_L2, "8 selection tiles do not split over the 2*cp = 16 chunks"),
    (2, 2, 48, TINY_L2, "Lighthouse cannot run at this length"),
], ids=["not-a-divisor", "zero", "length", "tiles", "too-short"])
def test_impossible_cp_is_a_one_line_error(world, cp, seq_len, lighthouse, fragment) -> None:
    with pytest.raises(LhConvertError) as caught:
        check_context_parallel(world=world, cp=cp, seq_len=seq_len, lighthouse=lighthouse)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_recipe_cp_field_and_flag(tmp_path) -> None:
    recipe = load_recipe("tiny-cpu")
    assert recipe.train.cp == 1 and recipe.with_train(cp=4).train.cp == 4
    with pytest.raises(LhConvertError, match="cp=0: needs an integer >= 1"):
        recipe.with_train(cp=0)
    with pytest.raises(LhConvertError, match="compile"):
        recipe.with_train(cp=2, compile=True)
    result = CliRunner().invoke(main, ["extend", "--recipe", "tiny-cpu", "--out",
                                       str(tmp_path / "run"), "--cp", "0"])
    assert result.exit_code == 2 and "cp=0: needs an integer >= 1" in result.output
    for command in ("extend", "recover"):
        assert "--cp" in CliRunner().invoke(main, [command, "--help"]).output


if __name__ == "__main__":  # one torchrun process of ``_launch``: FOLDER CHECK...
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    try:
        for name in sys.argv[2:]:
            globals()[name]()
            dist.barrier()
            if dist.get_rank() == 0:
                (Path(sys.argv[1]) / name).touch()
    finally:
        dist.destroy_process_group()
