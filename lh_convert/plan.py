"""``lh-convert plan``: what a training run would do, without training.

Reads only configs: a hub model's config and tokenizer are fetched without its weights (a GGUF
file is its own config, so a GGUF source is fetched whole), and the model is instantiated on
the meta device, so it is instant even for large models. Memory and time are estimates from
first principles, labelled as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .convert.rope import plan_rope_change
from .convert.settings import LighthouseSettings
from .convert.sources import load_config, resolve_source
from .convert.surgery import check_lighthouse_settings
from .train.outlook import recovery_note
from .train.recipes import Recipe
from .util.errors import LhConvertError
from .util.units import duration

# Sustained bf16 throughput assumed for the time estimate. H200: calibrated on the measured
# training step of the paper's 367M shape at 64K (docs/benchmarks.md: 1.97 s dense, 0.71 s
# Lighthouse; this model gives 2.0 s and 0.6 s); the others scaled by their peak.
ASSUMED_TFLOPS = {"NVIDIA H200": 500.0, "NVIDIA H100": 450.0, "NVIDIA B200": 900.0}
# fp32 on two CPU cores. Calibrated on tiny-cpu (2,048 tokens a step): about 2 s a step
# measured, which FLOPs match once the LM head's matmul is counted (for a small model with a
# large vocabulary it is most of the work; tests/lh_convert/test_plan_hours.py bounds the ratio).
CPU_TFLOPS = 0.05
# Beyond this many hours of training on the device present, plan says it is not practical.
PRACTICAL_HOURS = 72.0


@dataclass(frozen=True)
class RunPlan:
    parameters: int
    rope: str
    ctx: int
    selected: int
    lighthouse_layers: list[int]
    tokens_per_step: int
    memory_gib: float
    step_seconds_dense: float
    step_seconds_lighthouse: float
    device: str
    problems: list[str]


def _device() -> tuple[str, float]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return name, next((v for k, v in ASSUMED_TFLOPS.items() if k in name), 200.0)
    return "CPU", CPU_TFLOPS


def plan_run(*, recipe: Recipe, world_size: int = 1) -> RunPlan:
    """Plan ``recipe`` for the device present; constraint failures are listed, not raised."""
    source = resolve_source(recipe.model, weights=False)
    config = load_config(source)
    ctx = recipe.ctx
    problems: list[str] = []
    try:
        rope = plan_rope_change(config, target_context=ctx, method=recipe.rope).describe()
    except LhConvertError as error:
        rope, problems = "unchanged", [str(error)]
    settings: LighthouseSettings = recipe.lighthouse
    try:
        check_lighthouse_settings(settings, ctx=ctx, num_layers=config.num_hidden_layers)
        selected = settings.kernel.selected_length(ctx)
    except LhConvertError as error:
        problems.append(str(error))
        selected = ctx
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in meta.parameters())
    layers = config.num_hidden_layers
    try:
        dense = settings.dense_layer_set(layers)
    except LhConvertError:
        dense = frozenset()
    light = [i for i in range(layers) if i not in dense]
    hidden = config.hidden_size
    train = recipe.train
    tokens = train.micro_batch_size * train.grad_accum * ctx * world_size
    micro_tokens = train.micro_batch_size * ctx
    # fp32 weights + grads + two Adam moments, sharded over the ranks; bf16 activations.
    states = parameters * 16 / world_size
    checkpointed = train.activation_checkpointing != "none"
    per_layer_activation = micro_tokens * hidden * 2 * (1 if checkpointed else 34)
    activations = per_layer_activation * layers + micro_tokens * hidden * 2 * 34
    logits = min(train.loss_chunk, ctx) * config.vocab_size * 4 * 3 * train.micro_batch_size
    memory = (states + activations + logits) / 2**30
    device, tflops = _device()
    embedding = config.vocab_size * hidden
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    attn_width = config.num_attention_heads * head_dim
    # The decoder layers' matmuls (recomputed once under checkpointing), then the LM head's:
    # the input embedding is a lookup, but the head is a vocab x hidden matmul per token
    # (its chunks compute their gradients in the forward, so it runs once).
    body = parameters - embedding - (0 if tied else embedding)
    matmul = (6 * body * tokens * (1.33 if checkpointed else 1)
              + 6 * embedding * tokens)
    # causal attention, forward + backward (+ recompute): about 3.5 x 2 x N^2 x width per layer.
    def attention(n: int) -> float:
        return 3.5 * 2 * n * n * attn_width * train.micro_batch_size * train.grad_accum * world_size
    dense_flops = matmul + layers * attention(ctx)
    light_flops = matmul + len(dense) * attention(ctx) + len(light) * attention(selected)
    seconds = lambda flops: flops / (tflops * 1e12) / world_size  # noqa: E731
    return RunPlan(parameters=parameters, rope=rope, ctx=ctx, selected=selected,
                lighthouse_layers=light, tokens_per_step=tokens, memory_gib=memory,
                step_seconds_dense=seconds(dense_flops), step_seconds_lighthouse=seconds(light_flops),
                device=device, problems=problems)


def print_plan(plan: RunPlan, *, recipe: Recipe, echo: Callable[[str], None]) -> None:
    train = recipe.train
    echo(f"recipe        {recipe.name}: {recipe.model} -> {plan.ctx} tokens")
    echo(f"parameters    {plan.parameters / 1e6:.1f}M")
    echo(f"RoPE          {plan.rope}")
    echo(f"Lighthouse    {len(plan.lighthouse_layers)} layers attend to S = {plan.selected} of "
         f"N = {plan.ctx} tokens ({plan.ctx / plan.selected:.1f}x shorter); the other layers dense")
    echo(f"steps         stage 1 {train.stage1_steps} (Lighthouse), recovery {train.recovery_steps} "
         f"(dense), {plan.tokens_per_step:,} tokens per step")
    mode = train.activation_checkpointing
    checkpointing = f" with {mode} checkpointing" if mode != "none" else ""
    echo(f"memory        ~{plan.memory_gib:.1f} GiB per device (estimate: weights, grads, AdamW, "
         f"activations{checkpointing}, loss chunk)")
    for line in time_lines(plan, recipe=recipe):
        echo(line)
    note = recovery_note(recipe) if plan.lighthouse_layers else None
    if note:
        echo(f"NOTE          {note}")
    for problem in plan.problems:
        echo(f"PROBLEM       {problem}")


def stage_seconds(plan: RunPlan, *, recipe: Recipe) -> tuple[float, float]:
    """Estimated seconds of stage 1 (Lighthouse) and of recovery (dense)."""
    train = recipe.train
    return (train.stage1_steps * plan.step_seconds_lighthouse,
            train.recovery_steps * plan.step_seconds_dense)


def time_lines(plan: RunPlan, *, recipe: Recipe) -> list[str]:
    """The time estimate per step, per stage and in all, and whether it is practical here."""
    train = recipe.train
    stage1, recovery = stage_seconds(plan, recipe=recipe)
    lines = [f"time/step     ~{plan.step_seconds_lighthouse:.2f} s Lighthouse, "
             f"~{plan.step_seconds_dense:.2f} s dense on {plan.device} (estimate from FLOPs)",
             f"time          stage 1: {train.stage1_steps} steps, ~{duration(stage1)}; recovery: "
             f"{train.recovery_steps} steps, ~{duration(recovery)}; in all ~"
             f"{duration(stage1 + recovery)} on {plan.device}"]
    if (stage1 + recovery) / 3600 > PRACTICAL_HOURS:
        lines.append(f"NOT PRACTICAL on this device ({plan.device}): ~{duration(stage1 + recovery)} "
                     f"of training, over {PRACTICAL_HOURS:.0f} h; run it on a GPU (`lh-convert "
                     f"plan` there gives its estimate), or try --recipe tiny-cpu here")
    return lines
