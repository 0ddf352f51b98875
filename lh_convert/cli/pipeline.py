"""The pipeline's commands: convert, extend, recover, plan, export, eval."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import click

from ..convert.rope import DEFAULT_ROPE_METHOD, ROPE_METHODS
from ..util.errors import LhConvertError
from .group import CP_OPTION, INIT_OPTION, echo_once, lighthouse_options, main
from .params import TOKEN_LIST, TOKENS
from .verbosity_opts import REPORT_TO_OPTION


@main.command(epilog="Example: lh-convert convert --model smollm2-135m-gguf --ctx 64k "
                     "--out runs/smollm2-64k")
@click.option("--model", "model", required=True,
              help="Local HF folder, .gguf file, hub id (org/name) or alias (lh-convert aliases).")
@click.option("--ctx", type=TOKENS, required=True, help="Target context: 65536, 64k or 64K.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run folder to create.")
@click.option("--rope", type=click.Choice(ROPE_METHODS), default=DEFAULT_ROPE_METHOD,
              help="How RoPE is extended (theta: NTK-aware base increase).")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
              default="auto", help="Weight dtype (auto: the source's; float32 for GGUF).")
@INIT_OPTION
@click.option("--seed", default=0, help="Seed of the random init (with --init random).")
@lighthouse_options
def convert(model: str, ctx: int, out: Path, rope: str, dtype: str, init: str | None, seed: int,
            levels: int, pooling: int, topk: int, tile: int, dense_layers: tuple[int, ...],
            combine: str) -> None:
    """Convert a checkpoint into a Lighthouse run folder (RoPE + context + settings)."""
    from ..convert.settings import LighthouseSettings
    from ..convert.surgery import convert as convert_model

    settings = LighthouseSettings(levels=levels, pooling=pooling, topk=topk, tile=tile,
                                  dense_layers=dense_layers, combine=combine)
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
    from ..export.publish import PushRequest
    from ..export.to_hf import export as export_run

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


def _recipe_from_flags(recipe: str | None, model: str | None, ctx: int | None,
                       init: str | None = None, *, pinned=None, sets: tuple[str, ...] = (),
                       **train: object):
    """The recipe named (or one built from --model/--ctx, or a run's ``pinned`` one) with the
    flags' and ``--set``'s overrides applied."""
    from ..train.recipes import Recipe, load_recipe
    from ..train.resume_settings import apply_sets

    if recipe is not None:
        chosen = load_recipe(recipe)
    elif pinned is not None and model is None and ctx is None:
        chosen = pinned
    elif model is None or ctx is None:
        raise LhConvertError("pass --model and --ctx, or a --recipe that names them "
                             "(see `lh-convert recipes`)")
    else:
        chosen = Recipe(name="custom", description="command-line settings", model=model, ctx=ctx)
    chosen = chosen.with_train(**train)
    chosen = dataclasses.replace(chosen, model=model or chosen.model, ctx=ctx or chosen.ctx,
                                 init=init or chosen.init)
    return apply_sets(chosen, sets)


def _recipe_options(function):
    """What chooses a recipe and overrides its fields: shared by extend and plan."""
    for option in reversed([
        click.option("--recipe", default=None, help="Recipe name (recipes/NAME.toml) or .toml file."),
        click.option("--model", "model", default=None, help="Model to convert (overrides the recipe)."),
        click.option("--ctx", type=TOKENS, default=None, help="Target context (overrides the recipe)."),
        INIT_OPTION,
        click.option("--steps", "stage1_steps", type=int, default=None,
                     help="Stage-1 steps (overrides the recipe)."),
        click.option("--lr", type=float, default=None, help="Peak learning rate."),
        click.option("--grad-accum", type=int, default=None, help="Gradient accumulation steps."),
        click.option("--micro-batch-size", type=int, default=None, help="Sequences per micro-batch."),
        CP_OPTION,
        click.option("--set", "sets", multiple=True, metavar="TABLE.FIELD=VALUE",
                     help="Override any recipe field, typed as in a recipe file "
                          "(e.g. --set train.lr=1e-4 --set train.schedule=linear)."),
    ]):
        function = option(function)
    return function


@main.command(epilog="Example: lh-convert extend --recipe smollm2-135m-64k --out runs/smollm2-64k\n"
                     "Several GPUs: torchrun --nproc-per-node 8 -m lh_convert.cli extend ... "
                     "[--cp 4 for dp=2 x cp=4]")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Run folder (created, or resumed when it exists).")
@_recipe_options
@click.option("--data", multiple=True,
              help="Training data: .txt/.jsonl/.parquet files or folders, a `datasets` "
                   "folder, or a hub dataset id. Default: the Python standard library.")
@click.option("--override", is_flag=True,
              help="On a resume, allow settings that differ from the run's recipe.json (the "
                   "change is logged in metrics.jsonl).")
@REPORT_TO_OPTION
@click.option("--dry-run", is_flag=True, help="Print the plan and exit without training.")
def extend(out: Path, recipe: str | None, model: str | None, ctx: int | None, init: str | None,
           data: tuple[str, ...], override: bool, report_to: str, dry_run: bool,
           **train: object) -> None:
    """Convert (if needed) and train stage 1 with Lighthouse; `extend --out RUN_DIR` alone
    resumes with the run's pinned recipe.json."""
    from ..train.data import DataSpec
    from ..train.reporting import reporting
    from ..train.stages import extend as run_extend
    from ..train.stages import read_record

    recorded = read_record(out)
    chosen = _recipe_from_flags(recipe, model, ctx, init,
                                pinned=recorded[0] if recorded else None, **train)
    if dry_run:
        _print_plan(chosen)
        return
    if not data and recorded is None:
        echo_once("data: none given, training on the built-in corpus (this Python's standard "
                  "library source, held-out split by file)")
    with reporting(report_to, out, chosen.to_dict()):
        result = run_extend(recipe=chosen, out=out, data=DataSpec(paths=data), echo=click.echo,
                            override=override)
    echo_once(f"stage 1: {result.steps_run} steps in {result.seconds:.0f}s, now at step "
              f"{result.final_step}; loss curves in {out / 'loss.png'}")


@main.command(epilog="Example: lh-convert recover --run runs/smollm2-64k")
@click.option("--run", "run", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--steps", type=int, default=None,
              help="Recovery steps (default: the recipe's recovery_fraction of stage 1, 0.4).")
@CP_OPTION
@click.option("--dry-run", is_flag=True,
              help="Print the plan (with --steps and --cp applied) and exit without training.")
@REPORT_TO_OPTION
def recover(run: Path, steps: int | None, cp: int | None, dry_run: bool, report_to: str) -> None:
    """Dense recovery stage: same weights and optimizer state, dense SDPA in every layer."""
    from ..train.reporting import reporting
    from ..train.stages import recover as run_recover
    from ..train.stages import recovery_recipe

    if dry_run:
        _print_plan(recovery_recipe(run=run, steps=steps, cp=cp))
        return
    with reporting(report_to, run, recovery_recipe(run=run, steps=steps, cp=cp).to_dict()):
        result = run_recover(run=run, steps=steps, cp=cp, echo=click.echo)
    echo_once(f"recovery: {result.steps_run} steps in {result.seconds:.0f}s, now at step "
              f"{result.final_step}; export with `lh-convert export --run {run} --out DIR`")


@main.command(epilog="Example: lh-convert plan --recipe smollm2-135m-64k")
@_recipe_options
def plan(recipe: str | None, model: str | None, ctx: int | None, init: str | None,
         **train: object) -> None:
    """Print what training would do: parameters, RoPE, S vs N, memory and time estimates
    (reads configs only: no weights are fetched)."""
    _print_plan(_recipe_from_flags(recipe, model, ctx, init, **train))


def _print_plan(recipe) -> None:
    from ..plan import plan_run, print_plan

    planned = plan_run(recipe=recipe, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    print_plan(planned, recipe=recipe, echo=click.echo)
    if planned.problems:
        sys.exit(2)


@main.command("eval", epilog="Example: lh-convert eval --model runs/smollm2-64k --lengths "
                             "4k,8k,16k,32k --baseline smollm2-base --out eval-results")
@click.option("--model", "model", required=True, type=click.Path(path_type=Path),
              help="Model folder: a Hugging Face checkpoint, or a run folder (newest weights).")
@click.option("--suite", type=click.Choice(["long-context", "short", "all"]),
              default="long-context",
              help="long-context: passkey, needle in a haystack, loss by position (offline); "
                   "short: lm-eval's hellaswag, arc_easy, piqa (hub datasets).")
@click.option("--lengths", type=TOKEN_LIST, default=None,
              show_default="1k,2k on a CPU, 4k,8k,16k,32k on a GPU",
              help="Prompt lengths in tokens; those beyond the model's context are skipped.")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="A second model folder, evaluated the same way, shown side by side.")
@click.option("--out", default="eval-results", type=click.Path(path_type=Path),
              help="Results folder: results.md, PNG plots, lm-eval JSON, generated data, and "
                   "the request cache (cache/): a re-run after Ctrl-C resumes.")
@click.option("--limit", type=int, default=None, help="At most N rows per task (a quick look).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              show_default="cuda if available, else cpu", help="Where the models run.")
@click.option("--samples", default=4, help="Long-context rows per (length, depth) cell.")
@click.option("--seed", default=0, help="Seed of the generated long-context data.")
@click.option("--data", multiple=True,
              help="Data whose held-out documents make the haystacks and the loss-by-position "
                   "text (as extend's --data). Default: the built-in corpus.")
def eval_(model: Path, suite: str, lengths: tuple[int, ...] | None, baseline: Path | None, out: Path,
          limit: int | None, device: str | None, samples: int, seed: int,
          data: tuple[str, ...]) -> None:
    """Evaluate a model (dense) through lm-eval: offline long-context suite, standard tasks."""
    from ..evaluate.runner import run_eval

    run_eval(model=model, out=out, suite=suite, lengths=lengths, baseline=baseline, limit=limit,
             device=device, seed=seed, samples=samples, data=data, echo=click.echo)
