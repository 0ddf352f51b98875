"""Model surgery: turn a pretrained checkpoint into a Lighthouse run folder (``lh-convert convert``).

The order is the one that cannot go wrong: read the source config, change RoPE and the
context in the config, record the Lighthouse settings in it, build the model from that config
and load the weights (missing or unexpected keys are errors), then write the run folder
atomically. Lighthouse adds no parameters, so the weights are the source's, unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lighthouse_kernels.config import LighthouseConfig

from ..util.atomic import atomic_directory, bytes_of, check_output_folder
from ..util.checksums import write_checksums
from ..util.errors import LhConvertError
from .manifest import INITS, RunManifest
from .rope import DEFAULT_ROPE_METHOD, apply_rope_change, plan_rope_change
from .settings import CONFIG_KEY, LighthouseSettings
from .sources import load_config, load_model, load_tokenizer, resolve_source

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
MAX_SHARD_SIZE = "2GB"


def _valid_topks(settings: LighthouseSettings, ctx: int) -> list[int]:
    return [topk for topk in range(settings.tile, ctx + 1, settings.tile)
            if LighthouseConfig(levels=settings.levels, pooling=settings.pooling, topk=topk,
                                tile=settings.tile).length_problem(ctx) is None]


def check_lighthouse_settings(settings: LighthouseSettings, *, ctx: int, num_layers: int) -> None:
    """Raise a one-line error naming the violated constraint of SPEC §2 and a valid value."""
    try:
        kernel = settings.kernel
    except ValueError as error:
        raise LhConvertError(f"impossible Lighthouse parameters: {error}") from None
    settings.dense_layer_set(num_layers)
    problem = kernel.length_problem(ctx)
    if problem is None:
        return
    if ctx % kernel.coarsest_window:
        fix = f"use a --ctx that is a multiple of {kernel.coarsest_window}"
    else:
        topks = _valid_topks(settings, ctx)
        below = [topk for topk in topks if topk <= settings.topk]
        fix = (f"try --topk {below[-1] if below else topks[0]}" if topks else
               f"use fewer --levels or a smaller --pooling; --ctx {ctx} is too short for "
               f"--tile {settings.tile}")
    raise LhConvertError(f"impossible Lighthouse parameters for --ctx {ctx}: {problem}; {fix}")


def random_model(config, *, seed: int, dtype: torch.dtype):
    """A causal LM of ``config``'s architecture with transformers' own random init, seeded."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


@dataclass(frozen=True)
class ConvertResult:
    run_dir: Path
    manifest: RunManifest
    seconds: float


def convert(*, model: str, ctx: int, out: Path, rope: str = DEFAULT_ROPE_METHOD,
            settings: LighthouseSettings = LighthouseSettings(), dtype: str = "auto",
            init: str = "pretrained", seed: int = 0) -> ConvertResult:
    """Convert ``model`` (local folder, ``.gguf``, hub id or alias) into the run folder ``out``.

    The folder holds sharded safetensors weights, the tokenizer, a config with the new RoPE,
    ``max_position_embeddings = ctx`` and ``lighthouse`` settings, and ``manifest.json``.
    It appears only when complete; on any error nothing is left behind.

    ``init="random"`` keeps the source's architecture, tokenizer and (changed) config but
    initialises every weight afresh (transformers' own init, seeded with ``seed``): training
    from scratch. The source then needs no weights (a folder with config and tokenizer will do).
    """
    started = time.perf_counter()
    if dtype not in DTYPES:
        raise LhConvertError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if init not in INITS:
        raise LhConvertError(f"unknown --init {init!r}; choose one of {', '.join(INITS)}")
    out = Path(out)
    check_output_folder(out)
    source = resolve_source(model, weights=init == "pretrained")
    config = load_config(source)
    check_lighthouse_settings(settings, ctx=ctx, num_layers=config.num_hidden_layers)
    change = plan_rope_change(config, target_context=ctx, method=rope)
    apply_rope_change(config, change)
    setattr(config, CONFIG_KEY, settings.to_dict())
    if init == "random":
        network = random_model(config, seed=seed, dtype=DTYPES[dtype] or torch.float32)
    else:
        network = load_model(source, config=config, dtype=DTYPES[dtype])
    tokenizer = load_tokenizer(source)
    dense = settings.dense_layer_set(config.num_hidden_layers)
    manifest = RunManifest(
        source=source.to_dict(),
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        num_parameters=sum(p.numel() for p in network.parameters()),
        original_context=change.original_context,
        target_context=ctx,
        rope=change.to_dict(),
        lighthouse=settings.to_dict(),
        lighthouse_layers=[i for i in range(config.num_hidden_layers) if i not in dense],
        selected_length=settings.kernel.selected_length(ctx),
        init={"kind": init, "seed": seed} if init == "random" else {"kind": init},
        dtype=str(next(network.parameters()).dtype).removeprefix("torch."),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    with atomic_directory(out, needed=bytes_of(network.parameters())) as staging:
        network.save_pretrained(staging, max_shard_size=MAX_SHARD_SIZE)
        tokenizer.save_pretrained(staging)
        manifest.write(staging)
        write_checksums(staging)
    return ConvertResult(run_dir=out, manifest=manifest, seconds=time.perf_counter() - started)
