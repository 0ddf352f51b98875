"""End-to-end training throughput (BENCH.md): tokens/s per GPU of a full training step.

A randomly initialised Llama shaped like the paper's 367M model (d=1024, 30 layers, 8 heads of
128, FFN 1536, vocab 49152) or SmolLM2-135M's, float32 master weights computed in bf16
(FSDP2's mixed precision on one GPU, as training does; or bf16 autocast), fused AdamW, activation checkpointing (selective by default: the attention kernels' outputs
are kept), optionally ``torch.compile`` of every decoder layer, chunked LM-head loss, B=1.
The Lighthouse stage (first two and last two layers dense) against dense SDPA in every layer
(which is also the recovery stage's step), both wrapped the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .attention import ATTENTION_NAME, LighthouseSettings, probe
from .errors import LhConvertError
from .loss import CausalLMLoss
from .train import fsdp_shard, init_distributed
from .checkpointing import wrap_decoder_layers

PAPER_SHAPE = dict(hidden_size=1024, num_hidden_layers=30, num_attention_heads=8,
                   num_key_value_heads=8, head_dim=128, intermediate_size=1536, vocab_size=49152)
SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, head_dim=64, intermediate_size=1536, vocab_size=49152,
                     tie_word_embeddings=True)
SHAPES = {"paper-367m": PAPER_SHAPE, "smollm2-135m": SMOLLM2_SHAPE}


@dataclass(frozen=True)
class TrainBenchRow:
    n: int
    mode: str
    shape: str
    checkpointing: str
    compile: bool
    fsdp: bool
    tokens_per_s: float
    step_s: float
    peak_gib: float


def _model(*, lighthouse: bool, n: int, shape: dict, device: str, checkpointing: str,
           compile: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**shape, max_position_embeddings=n, rope_parameters={
        "rope_type": "default", "rope_theta": 500000.0})
    settings = LighthouseSettings()
    if not lighthouse:
        settings = LighthouseSettings(dense_layers=tuple(range(shape["num_hidden_layers"])))
    config.lighthouse = settings.to_dict()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_NAME,
                                             dtype=torch.float32).to(device)
    probe(model, expect_lighthouse=lighthouse)
    model.config.use_cache = False
    wrap_decoder_layers(model, checkpointing=checkpointing, compile=compile)
    return model


def bench_step(*, n: int, lighthouse: bool, shape: str = "paper-367m", steps: int = 4,
               warmup: int = 2, device: str = "cuda", checkpointing: str = "selective",
               compile: bool = False, fsdp: bool = True) -> TrainBenchRow:
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dims = SHAPES[shape]
    model = _model(lighthouse=lighthouse, n=n, shape=dims, device=device,
                   checkpointing=checkpointing, compile=compile)
    wrapper = CausalLMLoss(model, chunk=4096, compiled=compile)
    if fsdp:
        init_distributed()
        fsdp_shard(wrapper, precision="bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, dims["vocab_size"], (1, n), device=device)
    times = []
    for index in range(warmup + steps):
        torch.cuda.synchronize()
        tick = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not fsdp):
            loss, _ = wrapper(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - tick)
        if not torch.isfinite(loss):
            raise LhConvertError(f"non-finite loss in the throughput benchmark at N={n}")
    step = sorted(times)[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, wrapper, optimizer
    return TrainBenchRow(n=n, mode="lighthouse" if lighthouse else "dense", shape=shape,
                         checkpointing=checkpointing, compile=compile, fsdp=fsdp,
                         tokens_per_s=n / step,
                         step_s=step, peak_gib=peak)


def run_train_benchmark(*, lengths: list[int], out_dir: Path, echo: Callable[[str], None],
                        shape: str = "paper-367m", checkpointing: str = "selective",
                        compile: bool = False, fsdp: bool = True) -> list[TrainBenchRow]:
    if not torch.cuda.is_available():
        raise LhConvertError("the training benchmark needs a CUDA GPU; run it on a GPU machine")
    rows = []
    echo(f"shape {shape}, checkpointing {checkpointing}, compile {compile}, "
         f"{'FSDP2 bf16 params' if fsdp else 'bf16 autocast over float32 weights'}")
    echo(f"{'N':>8} {'mode':>11} {'tok/s':>9} {'step s':>8} {'peak GiB':>9}")
    for n in lengths:
        for lighthouse in (False, True):
            row = bench_step(n=n, lighthouse=lighthouse, shape=shape,
                             checkpointing=checkpointing, compile=compile, fsdp=fsdp)
            rows.append(row)
            echo(f"{row.n:>8} {row.mode:>11} {row.tokens_per_s:>9.0f} {row.step_s:>8.2f} "
                 f"{row.peak_gib:>9.1f}")
        dense, light = rows[-2], rows[-1]
        echo(f"{n:>8} {'ratio':>11} {light.tokens_per_s / dense.tokens_per_s:>8.2f}x")
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "shape": SHAPES[shape], "rows": [asdict(r) for r in rows]}
    (out_dir / "bench_train.json").write_text(json.dumps(record, indent=2))
    echo(json.dumps(record))
    return rows
