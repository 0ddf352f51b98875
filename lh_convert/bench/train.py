"""End-to-end training throughput (BENCH.md): tokens/s per GPU of a full training step.

A randomly initialised Llama shaped like the paper's 367M model (d=1024, 30 layers, 8 heads of
128, FFN 1536, vocab 49152), SmolLM2-135M's, or Llama-3.2-1B's / 3B's, float32 master weights
computed in bf16 (FSDP2's mixed precision, as training does; or bf16 autocast), fused AdamW,
activation checkpointing (selective by default: the attention kernels' outputs are kept),
optionally ``torch.compile`` of every decoder layer, chunked LM-head loss, B=1 per
data-parallel rank. The Lighthouse stage (first two and last two layers dense) against dense
SDPA in every layer (which is also the recovery stage's step), both wrapped the same way.

The model is wired by ``train.parallelize``, the function training uses, so what is timed is
what trains. Under ``torchrun`` every process takes its GPU (``LOCAL_RANK``) and FSDP2 shards
over all of them: with ``cp=1`` each rank is a data-parallel replica with its own
random batch; with ``cp > 1`` the ranks form the (dp, cp) mesh of ``context_parallel.py`` and
the ``cp`` ranks of one replica split its sequence (eagerly: CP does not compile). Tokens/s
per GPU is the global tokens of a step over the step time over the processes; the step time is
the slowest rank's median and the peak memory the largest rank's.

``device="cpu"`` is a rehearsal only: the same code on CPU processes with gloo (float32, no
mixed precision), at the ``tiny`` shape and short lengths, so tests prove the distributed
benchmark runs on a machine without a GPU. Its timings mean nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..convert.attention import ATTENTION_NAME, probe
from ..convert.settings import LighthouseSettings
from ..train.distributed import Dist, init_distributed
from ..train.parallelize import parallelize
from ..train.recipes import TrainSettings
from ..util.errors import LhConvertError
from ..util.figures import pyplot, save_figure

PAPER_SHAPE = dict(hidden_size=1024, num_hidden_layers=30, num_attention_heads=8,
                   num_key_value_heads=8, head_dim=128, intermediate_size=1536, vocab_size=49152)
SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, intermediate_size=1536, vocab_size=49152,
                     tie_word_embeddings=True)
LLAMA_1B_SHAPE = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, intermediate_size=8192,
                      vocab_size=128256, tie_word_embeddings=True)
LLAMA_3B_SHAPE = dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24,
                      num_key_value_heads=8, head_dim=128, intermediate_size=8192,
                      vocab_size=128256, tie_word_embeddings=True)
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=512,
                  tie_word_embeddings=True)
SHAPES = {"paper-367m": PAPER_SHAPE, "smollm2-135m": SMOLLM2_SHAPE, "llama-1b": LLAMA_1B_SHAPE,
          "llama-3b": LLAMA_3B_SHAPE, "tiny": TINY_SHAPE}
# SPEC's defaults (L=3, p=4, k=2048, m=128) need N >= 32K; the tiny shape runs at 1K-4K with
# 8 tiles (so cp = 2 and 4 split them) and two of its four layers on Lighthouse.
TINY_LIGHTHOUSE = LighthouseSettings(levels=2, pooling=4, topk=128, tile=16, dense_layers=(0, -1))
MODES = ("dense", "lighthouse")


@dataclass(frozen=True)
class TrainBenchRow:
    n: int
    mode: str
    shape: str
    checkpointing: str
    compile: bool
    fsdp: bool
    tokens_per_s: float  # per GPU (process): global tokens per step / step time / world
    step_s: float  # median over the timed steps, slowest rank
    peak_gib: float | None  # largest over ranks; None on CPU
    first_loss: float  # rank 0's at the first step: the whole sequence's under CP
    world: int = 1
    dp: int = 1
    cp: int = 1
    device: str = "cuda"


def lighthouse_settings(shape: str, *, lighthouse: bool) -> LighthouseSettings:
    """The shape's Lighthouse settings, or every layer dense (the recovery stage)."""
    settings = TINY_LIGHTHOUSE if shape == "tiny" else LighthouseSettings()
    if lighthouse:
        return settings
    return LighthouseSettings(levels=settings.levels, pooling=settings.pooling, topk=settings.topk,
                              tile=settings.tile,
                              dense_layers=tuple(range(SHAPES[shape]["num_hidden_layers"])))


def _model(*, lighthouse: bool, n: int, shape: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=n, rope_parameters={
        "rope_type": "default", "rope_theta": 500000.0})
    config.lighthouse = lighthouse_settings(shape, lighthouse=lighthouse).to_dict()
    torch.manual_seed(0)  # the same weights on every rank: FSDP2 keeps each rank's slice
    with torch.device(device):  # initialised in place: a 3B model in float32 is 13 GB
        model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_NAME,
                                                 dtype=torch.float32).to(device)
    probe(model, expect_lighthouse=lighthouse)
    return model


def _environment(*, device: str, fsdp: bool) -> Dist:
    """This process's rank, world and device; joins the ``torchrun`` group (or, on one GPU,
    the one-process group FSDP2 needs) through ``train.distributed.init_distributed``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise LhConvertError("the training benchmark needs a CUDA GPU; run it on a GPU machine "
                             "(--device cpu is a rehearsal of its code, with meaningless timings)")
    if device == "cpu" and torch.cuda.is_available():
        raise LhConvertError("--device cpu is the rehearsal for machines without CUDA; on this "
                             "machine use --device cuda")
    if world > 1 and not fsdp:
        raise LhConvertError(f"{world} processes train data parallel through FSDP2; "
                             "drop --autocast")
    if fsdp or world > 1:
        return init_distributed()
    return Dist(device=torch.device(device))


def _slowest(values: list[float], env: Dist) -> list[float]:
    """Each value's maximum over all ranks."""
    if env.world == 1:
        return values
    gathered = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(gathered, op=dist.ReduceOp.MAX)
    return gathered.tolist()


def bench_step(*, n: int, lighthouse: bool, env: Dist, shape: str = "paper-367m", steps: int = 4,
               warmup: int = 2, checkpointing: str = "selective", compile: bool = False,
               fsdp: bool = True, cp: int = 1) -> TrainBenchRow:
    """Median time of ``steps`` training steps after ``warmup``, at ``n`` tokens per sequence."""
    cuda = env.device.type == "cuda"
    torch._dynamo.reset()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(env.device)
    model = _model(lighthouse=lighthouse, n=n, shape=shape, device=env.device)
    settings = TrainSettings(activation_checkpointing=checkpointing, compile=compile, cp=cp,
                             loss_chunk=4096, precision="bf16" if cuda else "fp32", lr=1e-4)
    wired = parallelize(model, train=settings, env=env, seq_len=n, fsdp=fsdp)
    wrapper, optimizer, dp = wired.loss, wired.optimizer, wired.data_world
    # One random batch per data-parallel replica; the cp ranks of a replica share it.
    generator = torch.Generator(device=env.device).manual_seed(wired.data_rank)
    ids = torch.randint(0, SHAPES[shape]["vocab_size"], (1, n), device=env.device,
                        generator=generator)
    times, first_loss = [], None
    for index in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        tick = time.perf_counter()
        with wired.autocast():
            loss, _ = wrapper(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - tick)
        if not torch.isfinite(loss):
            raise LhConvertError(f"non-finite loss in the throughput benchmark at N={n}")
        first_loss = loss.item() if first_loss is None else first_loss
    peak = torch.cuda.max_memory_allocated(env.device) / 2**30 if cuda else 0.0
    step, peak = _slowest([sorted(times)[len(times) // 2], peak], env)
    sharded = wired.sharded
    del model, wrapper, optimizer, wired
    return TrainBenchRow(n=n, mode="lighthouse" if lighthouse else "dense", shape=shape,
                         checkpointing=checkpointing, compile=compile, fsdp=sharded,
                         tokens_per_s=dp * n / step / env.world, step_s=step,
                         peak_gib=peak if cuda else None, first_loss=first_loss,
                         world=env.world, dp=dp, cp=cp, device=env.device.type)


def _quiet(_: str) -> None:
    pass


def run_train_benchmark(*, lengths: list[int], out_dir: Path, echo: Callable[[str], None],
                        shape: str = "paper-367m", checkpointing: str = "selective",
                        compile: bool = False, fsdp: bool = True, device: str = "cuda",
                        cp: int = 1, modes: tuple[str, ...] = MODES, steps: int = 4,
                        warmup: int = 2) -> list[TrainBenchRow]:
    """Benchmark every length in every mode; rank 0 prints and writes ``bench_train.json``."""
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise LhConvertError(f"modes {','.join(unknown) or '(none)'} not known; choose from "
                             f"{','.join(MODES)}")
    if steps < 1 or warmup < 0:
        raise LhConvertError(f"--steps {steps} --warmup {warmup}: need steps >= 1, warmup >= 0")
    env = _environment(device=device, fsdp=fsdp)
    say = echo if env.main else _quiet
    if cp > 1 and compile:
        say("note: context parallelism runs eagerly; benchmarking with --no-compile")
        compile = False
    precision = ("FSDP2 bf16 params" if fsdp and device == "cuda" else
                 "bf16 autocast over float32 weights" if device == "cuda" else
                 "float32 (CPU rehearsal: timings mean nothing)")
    say(f"shape {shape}, checkpointing {checkpointing}, compile {compile}, {precision}, "
        f"{env.world} process(es), cp {cp}")
    say(f"{'N':>8} {'mode':>11} {'tok/s/GPU':>10} {'step s':>8} {'peak GiB':>9}")
    rows = []
    for n in lengths:
        for mode in modes:
            row = bench_step(n=n, lighthouse=mode == "lighthouse", env=env, shape=shape,
                             steps=steps, warmup=warmup, checkpointing=checkpointing,
                             compile=compile, fsdp=fsdp, cp=cp)
            rows.append(row)
            peak = "-" if row.peak_gib is None else f"{row.peak_gib:.1f}"
            say(f"{row.n:>8} {row.mode:>11} {row.tokens_per_s:>10.0f} {row.step_s:>8.2f} "
                f"{peak:>9}")
        latest = {row.mode: row for row in rows[-len(modes):]}
        if len(latest) == len(MODES):
            ratio = latest["lighthouse"].tokens_per_s / latest["dense"].tokens_per_s
            say(f"{n:>8} {'ratio':>11} {ratio:>9.2f}x")
    if env.main:
        name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else "cpu"
        record = {"date": time.strftime("%Y-%m-%d"), "device": name, "torch": torch.__version__,
                  "world": env.world, "cp": cp, "shape": SHAPES[shape],
                  "rows": [asdict(r) for r in rows]}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench_train.json").write_text(json.dumps(record, indent=2))
        plot_train_throughput(record["rows"], out_dir / "bench_train.png")
        echo(json.dumps(record))
    return rows


def plot_train_throughput(rows: Sequence[dict], path: Path) -> bool:
    """Training tokens/s (per GPU) by sequence length, dense vs the Lighthouse stage side by
    side, the speed-up written over each pair (rows as ``bench train`` writes them)."""
    lengths = sorted({row["n"] for row in rows})
    by = {(row["n"], row["mode"]): row for row in rows}
    if not lengths:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.38
    for offset, mode, colour in ((-width / 2, "dense", "tab:orange"),
                                 (width / 2, "lighthouse", "tab:blue")):
        xs = [i + offset for i, n in enumerate(lengths) if (n, mode) in by]
        heights = [by[(n, mode)]["tokens_per_s"] / 1e3 for n in lengths if (n, mode) in by]
        ax.bar(xs, heights, width, color=colour,
               label="dense SDPA (= recovery step)" if mode == "dense" else "Lighthouse stage")
    for i, n in enumerate(lengths):
        if (n, "dense") in by and (n, "lighthouse") in by:
            light = by[(n, "lighthouse")]
            ratio = light["tokens_per_s"] / by[(n, "dense")]["tokens_per_s"]
            ax.text(i + width / 2, light["tokens_per_s"] / 1e3, f"{ratio:.2f}x", ha="center",
                    va="bottom", fontsize=9)
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
    ax.set(xlabel="sequence length", ylabel="training tokens/s per GPU (thousands)",
           title="training-step throughput")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
