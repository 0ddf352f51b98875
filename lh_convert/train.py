"""The two training stages of SPEC §5: ``extend`` (Lighthouse) and ``recover`` (dense).

One loop serves both; the stage decides the attention implementation and the step range.
It runs in one process or under ``torchrun`` with FSDP2 (``fully_shard``) for data
parallelism. Everything needed for an exact resume is checkpointed (``train_state``); the
data order is a pure function of the seed and the step, so a resumed run sees the same batches.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from .checkpointing import wrap_decoder_layers
from .data import DataSpec, tokenize_corpus
from .errors import LhConvertError
from .loss import CausalLMLoss
from .manifest import read_manifest
from .metrics import METRICS, append_metrics, read_metrics, rewrite_metrics
from .packing import PackedSequences, batch_iterator
from .plan import recovery_note
from .recipes import Recipe
from .runs import load_run_model
from .train_state import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .wheel_models import cache_dir

LIGHTHOUSE_STAGE, DENSE_STAGE = "lighthouse", "dense"
LATE_FRACTION = 0.25


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the ``torchrun`` process group when there is one (NCCL on GPUs, gloo on CPUs).

    A single GPU gets a one-process NCCL group too, so it trains under FSDP2 like many do:
    its mixed precision keeps float32 master weights but computes with bf16 parameters, so
    the residual stream and every elementwise kernel work on half the bytes that autocast
    over float32 weights moves.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if world > 1:
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        elif cuda:
            dist.init_process_group(backend="nccl", store=dist.HashStore(), rank=0, world_size=1)
    return Dist(rank=dist.get_rank() if world > 1 else 0, world=world, device=device)


def learning_rate(step: int, *, recipe: Recipe) -> float:
    """Warmup, then the recipe's decay over both stages to ``lr * min_lr_ratio``."""
    train = recipe.train
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    floor = train.lr * train.min_lr_ratio
    progress = min(1.0, (step - train.warmup_steps) / max(1, train.total_steps - train.warmup_steps))
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "linear":
        return train.lr - (train.lr - floor) * progress
    return floor + 0.5 * (train.lr - floor) * (1 + math.cos(math.pi * progress))


def model_fingerprint(run_dir: Path) -> str:
    manifest = read_manifest(run_dir)
    return f"{manifest.source.get('spec')}|{manifest.model_type}|{manifest.target_context}"


def fsdp_shard(wrapper: CausalLMLoss, *, precision: str) -> None:
    """FSDP2: one group per decoder layer, the root (embeddings, norm, head) last."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    for layer in wrapper.lm.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(wrapper, mp_policy=policy)


def _autocast(recipe: Recipe, env: Dist, sharded: bool):
    if recipe.train.precision == "bf16" and not sharded:
        return torch.autocast(device_type=env.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class StageResult:
    steps_run: int
    final_step: int
    last_loss: float | None
    seconds: float


def _truncate_metrics(run_dir: Path, *, after_step: int, redo_switch: bool = False) -> None:
    """Drop log lines of steps the resumed run will redo (they were never checkpointed), and with
    ``redo_switch`` the validation at the switch, which a recovery starting afresh repeats."""
    if not (Path(run_dir) / METRICS).is_file():
        return
    rewrite_metrics(run_dir, [r for r in read_metrics(run_dir) if r["step"] <= after_step
                              and not (redo_switch and _is_switch_eval(r, after_step))])


def _is_switch_eval(row: dict, stage1_steps: int) -> bool:
    """The dense validation of stage 1's final weights that recovery logs before its first step
    (a recovery step is numbered after stage 1, so a dense eval at stage 1's last step is it)."""
    return (row.get("kind") == "eval" and row.get("stage") == DENSE_STAGE
            and row["step"] == stage1_steps)


def _evaluate(model, samples: PackedSequences, *, recipe: Recipe, env: Dist, sharded: bool
              ) -> tuple[float, float]:
    losses, late = [], []
    with torch.no_grad(), _autocast(recipe, env, sharded):
        for index in range(min(recipe.train.eval_batches, len(samples))):
            ids = samples[index].unsqueeze(0).to(env.device)
            loss, late_loss = model(ids, late_fraction=LATE_FRACTION)
            losses.append(loss.item())
            late.append(late_loss.item())
    return sum(losses) / len(losses), sum(late) / len(late)


def run_stage(*, run_dir: Path, recipe: Recipe, stage: str, data: DataSpec, env: Dist,
              echo: Callable[[str], None], progress: bool = True,
              stop_after: int | None = None) -> StageResult:
    """Train ``stage`` from the latest checkpoint (or the converted weights) to its last step.

    ``stop_after`` ends the run early after that many steps (tests; the checkpoint is saved).
    With ``train.deterministic`` the stage runs under ``torch.use_deterministic_algorithms``.
    """
    with deterministic_algorithms(True) if recipe.train.deterministic else contextlib.nullcontext():
        return _run_stage(run_dir=run_dir, recipe=recipe, stage=stage, data=data, env=env,
                          echo=echo, progress=progress, stop_after=stop_after)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` for the duration, then the old setting.

    Enabled, SDPA's backward runs its deterministic path (Lighthouse's own kernels always
    are); cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when its first handle is made.
    """
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _run_stage(*, run_dir: Path, recipe: Recipe, stage: str, data: DataSpec, env: Dist,
               echo: Callable[[str], None], progress: bool, stop_after: int | None
               ) -> StageResult:
    run_dir = Path(run_dir)
    train = recipe.train
    first_step, last_step = ((0, train.stage1_steps) if stage == LIGHTHOUSE_STAGE else
                             (train.stage1_steps, train.total_steps))
    checkpoint = latest_checkpoint(run_dir)
    loaded = load_checkpoint(checkpoint) if checkpoint is not None else None
    fingerprint = model_fingerprint(run_dir)
    if loaded is not None and loaded.state.model_fingerprint != fingerprint:
        raise LhConvertError(f"checkpoint {checkpoint} belongs to a different model "
                             f"({loaded.state.model_fingerprint}); use a new --out")
    if stage == DENSE_STAGE and (loaded is None or loaded.state.step < train.stage1_steps):
        done = loaded.state.step if loaded else 0
        raise LhConvertError(f"recovery needs a finished stage 1 ({train.stage1_steps} steps), "
                             f"but {run_dir} has {done}; run `lh-convert extend` first")
    start = loaded.state.step if loaded is not None else 0
    if start >= last_step:
        name = "stage 1" if stage == LIGHTHOUSE_STAGE else "recovery"
        echo(f"{name} already complete at step {start}; nothing to do")
        return StageResult(0, start, None, 0.0)

    torch.manual_seed(train.seed)
    model, manifest, report = load_run_model(run_dir, lighthouse=stage == LIGHTHOUSE_STAGE,
                                             dtype=torch.float32, device=env.device, trained=False)
    if env.main:
        echo(f"attention probe: {report.summary()}" if stage == LIGHTHOUSE_STAGE else
             f"attention probe: all {manifest.num_layers} layers dense (recovery stage)")
        note = recovery_note(train) if stage == LIGHTHOUSE_STAGE else None
        if note and report.layers("lighthouse"):
            echo(f"note: {note}")
    model.config.use_cache = False
    wrap_decoder_layers(model, checkpointing=train.checkpointing_mode, compile=train.compile)
    if train.compile and env.main:
        echo("torch.compile: the first step (and the first validation) compiles the decoder "
             "layers, about a minute, before the progress bar moves")
    sharded = dist.is_initialized()  # several processes, or one GPU (see init_distributed)
    data_rank, data_world = env.rank, env.world
    if train.cp > 1:  # a (dp, cp) mesh; FSDP2 below still shards over all dp*cp ranks
        # Imported here: it uses PyTorch's private ring-attention modules, which only CP needs.
        from .context_parallel import context_parallel_loss

        wrapper = context_parallel_loss(model, cp=train.cp, seq_len=manifest.target_context,
                                        chunk=train.loss_chunk, device_type=env.device.type)
        plan = wrapper.plan
        data_rank, data_world = plan.dp_rank, plan.dp
        if env.main:
            echo(f"context parallelism: dp={plan.dp} x cp={plan.cp}")
    else:
        wrapper = CausalLMLoss(model, chunk=train.loss_chunk, compiled=train.compile)
    if sharded:
        fsdp_shard(wrapper, precision=train.precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, betas=(train.beta1, train.beta2),
                                  weight_decay=train.weight_decay, fused=env.device.type == "cuda")
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if loaded is not None:
        set_model_state_dict(model, loaded.model_state, options=StateDictOptions(full_state_dict=True))
        set_optimizer_state_dict(model, optimizer, loaded.optim_state,
                                 options=StateDictOptions(full_state_dict=True))
        restore_rng(loaded.rng)
        if env.main:
            echo(f"resumed from {checkpoint.name} (stage {loaded.state.stage}, step {start})")
    at_switch = stage == DENSE_STAGE and start == train.stage1_steps  # recovery from its start
    if env.main:
        _truncate_metrics(run_dir, after_step=start, redo_switch=at_switch)

    corpus = tokenize_corpus(spec=data, tokenizer=_tokenizer(run_dir), cache_dir=cache_dir() / "tokens",
                             progress=progress and env.main)
    seq_len = manifest.target_context
    samples = PackedSequences(corpus.train, seq_len=seq_len)
    validation = PackedSequences(corpus.validation, seq_len=seq_len)
    if env.main:
        echo(f"{corpus.description}; {len(samples)} training sequences of {seq_len} tokens")
    batch_size = train.micro_batch_size
    data_step = loaded.state.data_step if loaded is not None else 0
    batches: Iterator[torch.Tensor] = batch_iterator(samples, batch_size=batch_size, seed=train.seed,
                                                     start_step=data_step, rank=data_rank,
                                                     world_size=data_world)
    tokens = loaded.state.tokens if loaded is not None else 0
    tokens_per_step = batch_size * data_world * train.grad_accum * seq_len
    end = last_step if stop_after is None else min(last_step, start + stop_after)

    committed = {"data_step": data_step, "tokens": tokens}  # as of the last completed step

    def state_at(step: int) -> TrainState:
        return TrainState(stage=stage, step=step, tokens=committed["tokens"],
                          data_step=committed["data_step"],
                          stage1_steps=train.stage1_steps, recovery_steps=train.recovery_steps,
                          model_fingerprint=fingerprint)

    def save(step: int) -> None:
        model_state = get_model_state_dict(model, options=options)
        optim_state = get_optimizer_state_dict(model, optimizer, options=options)
        if env.main:
            save_checkpoint(run_dir, model_state=model_state, optim_state=optim_state,
                            state=state_at(step), keep=train.keep_checkpoints)
        if sharded:
            dist.barrier()

    def validate(step: int) -> float:
        val, late = _evaluate(wrapper, validation, recipe=recipe, env=env, sharded=sharded)
        if env.main:
            append_metrics(run_dir, {"kind": "eval", "stage": stage, "step": step,
                                     "val_loss": val, "val_late_loss": late})
        return val

    if at_switch:  # the jump at the switch: stage 1's weights, now with dense attention
        val = validate(start)
        if env.main:
            echo(f"at the switch (step {start}, stage 1's weights): validation loss {val:.4f} "
                 f"with dense attention{_stage1_val_text(run_dir, start)}")
    # Named by what runs: a dense baseline's stage 1 is not a Lighthouse stage.
    desc = ("stage 2 (recovery)" if stage == DENSE_STAGE else
            f"stage 1 ({'Lighthouse' if report.layers('lighthouse') else 'dense'})")
    bar = _progress_bar(total=end - start, desc=desc, enabled=progress and env.main)
    started, last_loss, step = time.perf_counter(), None, start
    try:
        while step < end:
            tick = time.perf_counter()
            lr = learning_rate(step, recipe=recipe)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = torch.zeros((), device=env.device)
            for _ in range(train.grad_accum):
                ids = next(batches).to(env.device)
                data_step += 1
                with _autocast(recipe, env, sharded):
                    loss, _ = wrapper(ids)
                (loss / train.grad_accum).backward()
                step_loss += loss.detach() / train.grad_accum
            if sharded:
                dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
            last_loss = step_loss.item()
            if not math.isfinite(last_loss):
                kept = latest_checkpoint(run_dir)
                raise LhConvertError(f"the loss became {last_loss} at step {step + 1}; stopped "
                                     f"without saving (last good checkpoint: "
                                     f"{kept.name if kept else 'none'}); lower the learning rate")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += tokens_per_step
            committed.update(data_step=data_step, tokens=tokens)
            seconds = time.perf_counter() - tick
            record = {"kind": "train", "stage": stage, "step": step, "loss": last_loss, "lr": lr,
                      "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor")
                                         else grad_norm),
                      "tokens": tokens, "tokens_per_s": tokens_per_step / seconds,
                      "step_s": seconds, "memory_gib": _peak_memory_gib(env)}
            if env.main:
                append_metrics(run_dir, record)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}",
                                tok_s=f"{record['tokens_per_s']:.0f}")
            if step % train.eval_every == 0 or step == last_step:
                validate(step)
            if step % train.checkpoint_every == 0 or step == end:
                save(step)
    except KeyboardInterrupt:
        bar.close()
        if step > start and latest_checkpoint(run_dir) != run_dir / "checkpoints" / f"step-{step:07d}":
            save(step)
        raise
    bar.close()
    if env.main:
        from .plots import plot_run

        plot_run(run_dir)
    return StageResult(step - start, step, last_loss, time.perf_counter() - started)


def _stage1_val_text(run_dir: Path, stage1_steps: int) -> str:
    """", X with stage 1's attention" from stage 1's validation at its last step, if logged."""
    last = [r for r in read_metrics(run_dir) if r.get("kind") == "eval"
            and r.get("stage") == LIGHTHOUSE_STAGE and r["step"] == stage1_steps]
    return f", {last[-1]['val_loss']:.4f} with stage 1's attention" if last else ""


def _tokenizer(run_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run_dir)


def _peak_memory_gib(env: Dist) -> float | None:
    if env.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(env.device) / 2**30


def _progress_bar(*, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
