"""The model card (``README.md``) that ``lh-convert export`` writes into every exported folder.

It is what a reader of the hub page needs to trust the checkpoint: which base model, what
changed (RoPE, context), how it was trained (Lighthouse settings and layers, steps and tokens
per stage from ``RUN_DIR/metrics.jsonl``, the final validation losses), the evaluation table
when ``RUN_DIR/eval/results.md`` exists, and that the result is an ordinary dense checkpoint.
Local paths are reduced to their last component, so a card never reveals the user's file system.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..convert.manifest import RunManifest
from ..train.metrics import read_metrics
from .card_facts import TrainingData, source_license, training_data

CARD_NAME = "README.md"
CARD_TAGS = ("lh-convert", "lighthouse-attention", "long-context")
EVAL_RESULTS = Path("eval") / "results.md"
PAPER = "Peng, Ghosh, Quesnelle, arXiv 2605.06554"
# metrics.jsonl stage names -> how the card names them, in training order.
STAGE_TITLES = {"lighthouse": "1: `extend` (Lighthouse)", "dense": "2: `recover` (dense)"}


@dataclass(frozen=True)
class StageSummary:
    """One training stage as read back from ``metrics.jsonl``.

    ``tokens`` counts this stage's tokens only (the records hold a running total over both
    stages); the losses are those of the stage's last evaluation, ``None`` when it had none.
    """

    stage: str
    steps: int
    last_step: int
    tokens: int
    val_loss: float | None
    val_late_loss: float | None


def summarize_training(*, run_dir: Path) -> list[StageSummary]:
    """Steps, tokens and final validation losses of each stage that trained, in stage order."""
    records = read_metrics(run_dir)
    train = sorted((r for r in records if r.get("kind") == "train"),
                   key=lambda r: r["step"])
    summaries = []
    for stage in STAGE_TITLES:
        rows = [r for r in train if r.get("stage") == stage]
        if not rows:
            continue
        before = [r for r in train if r["step"] < rows[0]["step"]]
        tokens_before = int(before[-1].get("tokens", 0)) if before else 0
        evals = [r for r in records if r.get("kind") == "eval" and r.get("stage") == stage]
        last_eval = max(evals, key=lambda r: r.get("step", 0)) if evals else {}
        summaries.append(StageSummary(
            stage=stage, steps=len({r["step"] for r in rows}), last_step=int(rows[-1]["step"]),
            tokens=int(rows[-1].get("tokens", 0)) - tokens_before,
            val_loss=last_eval.get("val_loss"), val_late_loss=last_eval.get("val_late_loss")))
    return summaries


def _display_name(source: dict[str, Any]) -> str:
    """The base model as a reader should see it: hub id, alias, or a path's last component."""
    if source.get("hub_id"):
        return source["hub_id"]
    if source.get("alias"):
        return source["alias"]
    spec = str(source.get("spec") or source.get("path") or "a local checkpoint")
    return Path(spec).name or spec


def _plain_name(source: dict[str, Any]) -> str:
    """The model's own name for the title: the hub name, a GGUF file's stem before its
    quantization (``SmolLM2-135M-Instruct.Q4_1.gguf``), else the display name."""
    if not source.get("hub_id") and source.get("gguf_file"):
        return str(source["gguf_file"]).split(".")[0]
    return _display_name(source).split("/")[-1]


def _front_matter(manifest: RunManifest, *, license_id: str | None,
                  datasets: tuple[str, ...]) -> str:
    # JSON strings are valid YAML scalars, so values are quoted with json.dumps.
    lines = ["---"]
    if manifest.source.get("hub_id") and manifest.init["kind"] == "pretrained":
        lines.append(f"base_model: {json.dumps(manifest.source['hub_id'])}")
    if license_id:
        lines.append(f"license: {json.dumps(license_id)}")
    if datasets:
        lines += ["datasets:", *(f"- {json.dumps(name)}" for name in datasets)]
    lines += ["library_name: transformers", "tags:", *(f"- {tag}" for tag in CARD_TAGS),
              "pipeline_tag: text-generation", "---"]
    return "\n".join(lines)


def _summary_sentence(manifest: RunManifest, base: str, *, trained: bool) -> str:
    extended = (f"`{base}` with its context window extended from "
                f"{manifest.original_context:,} to {manifest.target_context:,} tokens by lh-convert")
    if trained:
        sentence = (f"{extended}, then trained at the new length with Lighthouse Attention "
                    f"({PAPER}).")
    else:
        sentence = (f"{extended} and prepared for training with Lighthouse Attention ({PAPER}); "
                    f"it has not been trained at the new length yet.")
    if manifest.init["kind"] == "random":
        sentence += (f" Its weights were initialised at random (seed {manifest.init.get('seed')}): "
                     f"only the architecture and tokenizer are the base model's.")
    return sentence


def _layer_list(layers: list[int]) -> str:
    return ", ".join(str(layer) for layer in layers) if layers else "none"


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _training_section(stages: list[StageSummary], data: TrainingData | None) -> list[str]:
    if not stages:
        return ["## Training", "",
                "Not trained: the weights are the base model's, with only the RoPE and context "
                "changes above. Quality at the new context has not been established.", ""]
    lines = ["## Training", "",
             f"Training data: {data.text if data else 'not recorded'}.", "",
             "| Stage | Steps | Tokens | Final validation loss | Final late-position loss |",
             "|---|---:|---:|---:|---:|"]
    for stage in stages:
        lines.append(f"| {STAGE_TITLES[stage.stage]} | {stage.steps:,} | {stage.tokens:,} | "
                     f"{_loss(stage.val_loss)} | {_loss(stage.val_late_loss)} |")
    total = sum(stage.tokens for stage in stages)
    lines += ["", f"{total:,} training tokens in all. Validation loss is in nats per token on a "
                  f"held-out split; the late-position loss is that of the last quarter of "
                  f"positions of each sequence.", ""]
    return lines


def build_model_card(*, run_dir: Path, manifest: RunManifest, repo_id: str | None = None) -> str:
    """The text of ``README.md`` for the export of ``run_dir``.

    Args:
        run_dir: the run folder (read for ``metrics.jsonl`` and ``eval/results.md``).
        manifest: the run's manifest.
        repo_id: the hub repository the card will live in, for the usage example; without
            it the example loads a local folder.
    """
    base = _display_name(manifest.source)
    settings = manifest.lighthouse
    lighthouse_layers = manifest.lighthouse_layers
    dense_layers = [i for i in range(manifest.num_layers) if i not in set(lighthouse_layers)]
    stages = summarize_training(run_dir=run_dir)
    data = training_data(run_dir) if stages else None
    where = repo_id or "path/to/this/folder"
    version = f"lh-convert {__version__}"
    if manifest.tool_version != __version__:
        version += f" (run converted with {manifest.tool_version})"
    lines = [
        _front_matter(manifest, license_id=source_license(manifest.source),
                      datasets=data.datasets if data else ()), "",
        f"# {_plain_name(manifest.source)}, extended to a {manifest.target_context:,}-token "
        f"context", "",
        _summary_sentence(manifest, base, trained=bool(stages)), "",
        "## What was done", "",
        f"- **RoPE:** {manifest.rope.get('description', manifest.rope.get('method', 'unchanged'))}",
        f"- **Context:** {manifest.original_context:,} -> {manifest.target_context:,} tokens",
        f"- **Lighthouse Attention (training only):** {settings.get('levels')} levels, pooling "
        f"{settings.get('pooling')}, top-k {settings.get('topk')}, tile {settings.get('tile')}; "
        f"ran in {len(lighthouse_layers)} of {manifest.num_layers} layers "
        f"({_layer_list(lighthouse_layers)}), dense attention in layers "
        f"{_layer_list(dense_layers)}; each attention call selected "
        f"{manifest.selected_length:,} of {manifest.target_context:,} positions",
        f"- **Weights:** {manifest.model_type}, {manifest.num_parameters / 1e6:.1f}M parameters, "
        f"{manifest.dtype}", "",
        *_training_section(stages, data),
    ]
    results = Path(run_dir) / EVAL_RESULTS
    if results.is_file():
        lines += ["## Evaluation", "", results.read_text(encoding="utf-8").rstrip("\n"), ""]
    lines += [
        "## Use", "",
        f"An ordinary dense {manifest.model_type} checkpoint: Lighthouse Attention is used only "
        "in training, adds no parameters, and was removed at export (no `lighthouse` config "
        "block, no custom code, no `trust_remote_code`). It runs with standard attention:", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"model = AutoModelForCausalLM.from_pretrained({json.dumps(where)})",
        f"tokenizer = AutoTokenizer.from_pretrained({json.dumps(where)})",
        "```", "",
        f"Made with {version}.", "",
    ]
    return "\n".join(lines)
