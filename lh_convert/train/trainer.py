"""The training loop of SPEC §5's two stages: ``extend`` (Lighthouse) and ``recover`` (dense).

One ``Trainer`` serves both; the stage decides the attention implementation and the step range.
Its seams follow torchtitan's Trainer: ``setup`` (model, probe, ``parallelize``, data),
``resume`` (weights, optimizer, RNG and data position from the newest checkpoint),
``train_step``, ``validate``, ``save`` and ``run``. It runs in one process or under ``torchrun``
with FSDP2. Everything an exact resume needs is checkpointed (``train.checkpoint``); the data
order is a pure function of the seed and the step, so a resumed run sees the same batches.
"""

from __future__ import annotations

import contextlib
import math
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

from ..convert.attention import set_lighthouse_settings
from ..convert.manifest import read_manifest
from ..convert.run_model import load_run_model
from ..util import hf_load
from ..util.determinism import deterministic_algorithms
from ..util.errors import LhConvertError
from ..util.paths import cache_dir
from .checkpoint import (
    LoadedCheckpoint,
    TrainState,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .data import DataSpec, tokenize_corpus
from .distributed import Dist
from .housekeeping import tidy_run
from .metrics import METRICS, append_metrics, plot_run, read_metrics, rewrite_metrics
from .outlook import recovery_note
from .packing import PackedSequences, batch_iterator
from .parallelize import parallelize
from .preflight import pin_data
from .recipes import Recipe
from .resume_settings import interrupted_line
from .schedule import learning_rate, lighthouse_at

LIGHTHOUSE_STAGE, DENSE_STAGE = "lighthouse", "dense"
LATE_FRACTION = 0.25


def model_fingerprint(run_dir: Path) -> str:
    manifest = read_manifest(run_dir)
    return f"{manifest.source.get('spec')}|{manifest.model_type}|{manifest.target_context}"


@dataclass
class StageResult:
    steps_run: int
    final_step: int
    last_loss: float | None
    seconds: float


def run_stage(*, run_dir: Path, recipe: Recipe, stage: str, data: DataSpec, env: Dist,
              echo: Callable[[str], None], progress: bool = True,
              stop_after: int | None = None) -> StageResult:
    """Train ``stage`` from the latest checkpoint (or the converted weights) to its last step.

    ``stop_after`` ends the run early after that many steps (tests; the checkpoint is saved).
    With ``train.deterministic`` the stage runs under ``torch.use_deterministic_algorithms``.
    """
    if env.main:
        tidy_run(run_dir, keep=recipe.train.keep_checkpoints)
    with deterministic_algorithms(True) if recipe.train.deterministic else contextlib.nullcontext():
        trainer = Trainer(run_dir=run_dir, recipe=recipe, stage=stage, data=data, env=env,
                          echo=echo, progress=progress)
        if trainer.step >= trainer.last_step:
            name = "stage 1" if stage == LIGHTHOUSE_STAGE else "recovery"
            echo(f"{name} already complete at step {trainer.step}; nothing to do")
            return StageResult(0, trainer.step, None, 0.0)
        trainer.setup()
        trainer.resume()
        return trainer.run(stop_after=stop_after)


class Trainer:
    """One stage of one run folder. ``step`` counts optimizer steps across both stages."""

    def __init__(self, *, run_dir: Path, recipe: Recipe, stage: str, data: DataSpec, env: Dist,
                 echo: Callable[[str], None], progress: bool = True) -> None:
        self.run_dir, self.recipe, self.stage, self.data = Path(run_dir), recipe, stage, data
        self.env, self.echo, self.progress = env, echo, progress and env.main
        train = recipe.train
        self.first_step, self.last_step = ((0, train.stage1_steps) if stage == LIGHTHOUSE_STAGE
                                           else (train.stage1_steps, train.total_steps))
        self.fingerprint = model_fingerprint(self.run_dir)
        self.loaded = self._newest_checkpoint()
        self.step = self.loaded.state.step if self.loaded is not None else 0
        self.start = self.step
        self.tokens = self.loaded.state.tokens if self.loaded is not None else 0
        self.data_step = self.loaded.state.data_step if self.loaded is not None else 0

    def _newest_checkpoint(self) -> LoadedCheckpoint | None:
        """The newest checkpoint, checked to belong to this run and to allow this stage."""
        path = latest_checkpoint(self.run_dir)
        loaded = load_checkpoint(path) if path is not None else None
        if loaded is not None and loaded.state.model_fingerprint != self.fingerprint:
            raise LhConvertError(f"checkpoint {path} belongs to a different model "
                                 f"({loaded.state.model_fingerprint}); use a new --out")
        stage1 = self.recipe.train.stage1_steps
        if self.stage == DENSE_STAGE and (loaded is None or loaded.state.step < stage1):
            done = loaded.state.step if loaded else 0
            raise LhConvertError(f"recovery needs a finished stage 1 ({stage1} steps), but "
                                 f"{self.run_dir} has {done}; run `lh-convert extend` first")
        return loaded

    # ---- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Load and probe the model, wrap it for training, and open the data."""
        train, env = self.recipe.train, self.env
        torch.manual_seed(train.seed)
        model, manifest, report = load_run_model(
            self.run_dir, lighthouse=self.stage == LIGHTHOUSE_STAGE, dtype=torch.float32,
            device=env.device)
        self.model, self.seq_len = model, manifest.target_context
        self.num_layers = manifest.num_layers
        self.lighthouse_layers = report.layers("lighthouse")
        self.sparsifying = self.stage == LIGHTHOUSE_STAGE and train.sparsify_steps > 0
        self.settings = self.recipe.lighthouse
        if env.main:
            self.echo(f"attention probe: {report.summary()}" if self.stage == LIGHTHOUSE_STAGE
                      else f"attention probe: all {manifest.num_layers} layers dense "
                           f"(recovery stage)")
            note = recovery_note(self.recipe) if self.stage == LIGHTHOUSE_STAGE else None
            if note and self.lighthouse_layers:
                self.echo(f"note: {note}")
            if train.compile:
                self.echo("torch.compile: the first step (and the first validation) compiles the "
                          "decoder layers, about a minute, before the progress bar moves")
        self.wired = parallelize(model, train=train, env=env, seq_len=self.seq_len)
        if self.wired.cp_plan is not None and env.main:
            self.echo(f"context parallelism: dp={self.wired.cp_plan.dp} x "
                      f"cp={self.wired.cp_plan.cp}")
        self._open_data()

    def _open_data(self) -> None:
        corpus = tokenize_corpus(spec=self.data, tokenizer=hf_load.load_tokenizer(self.run_dir),
                                 cache_dir=cache_dir() / "tokens", progress=self.progress)
        if self.env.main:
            pin_data(self.run_dir, corpus=corpus, trained=self.step > 0)
        self.samples = PackedSequences(corpus.train, seq_len=self.seq_len)
        self.validation = PackedSequences(corpus.validation, seq_len=self.seq_len)
        if self.env.main:
            self.echo(f"{corpus.description}; {len(self.samples)} training sequences of "
                      f"{self.seq_len} tokens")
        train = self.recipe.train
        self.tokens_per_step = (train.micro_batch_size * self.wired.data_world * train.grad_accum
                                * self.seq_len)

    # ---- resume -----------------------------------------------------------------------------

    def resume(self) -> None:
        """Weights, optimizer state and RNG from the newest checkpoint; the log trimmed to it."""
        if self.loaded is not None:
            full = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, self.loaded.model_state, options=full)
            set_optimizer_state_dict(self.model, self.wired.optimizer, self.loaded.optim_state,
                                     options=full)
            restore_rng(self.loaded.rng)
            if self.env.main:
                self.echo(f"resumed from {self.loaded.path.name} (stage {self.loaded.state.stage}, "
                          f"step {self.step})")
            self.loaded = None  # its tensors are in the model now
        self.at_switch = self.stage == DENSE_STAGE and self.step == self.recipe.train.stage1_steps
        if self.env.main:
            self._truncate_metrics()
        train = self.recipe.train
        self.batches: Iterator[torch.Tensor] = batch_iterator(
            self.samples, batch_size=train.micro_batch_size, seed=train.seed,
            start_step=self.data_step, rank=self.wired.data_rank, world_size=self.wired.data_world)

    def _truncate_metrics(self) -> None:
        """Drop log lines of steps this run will redo (they were never checkpointed), and at the
        start of recovery the validation at the switch, which it repeats."""
        if not (self.run_dir / METRICS).is_file():
            return
        rewrite_metrics(self.run_dir, [r for r in read_metrics(self.run_dir)
                                       if r["step"] <= self.step
                                       and not (self.at_switch and self._is_switch_eval(r))])

    def _is_switch_eval(self, row: dict) -> bool:
        """The dense validation of stage 1's final weights that recovery logs before its first
        step (a recovery step is numbered after stage 1, so a dense eval at its last step)."""
        return (row.get("kind") == "eval" and row.get("stage") == DENSE_STAGE
                and row["step"] == self.recipe.train.stage1_steps)

    # ---- one step, a validation, a checkpoint -----------------------------------------------

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns its log record."""
        train, env, wired = self.recipe.train, self.env, self.wired
        tick = time.perf_counter()
        if self.sparsifying:
            self._sparsify()
        lr = learning_rate(self.step, recipe=self.recipe)
        for group in wired.optimizer.param_groups:
            group["lr"] = lr
        step_loss = torch.zeros((), device=env.device)
        data_step = self.data_step  # committed below, with the step: a Ctrl-C mid-step saves
        for _ in range(train.grad_accum):  # the position of the last completed step
            ids = next(self.batches).to(env.device)
            data_step += 1
            with wired.autocast():
                loss, _ = wired.loss(ids)
            (loss / train.grad_accum).backward()
            step_loss += loss.detach() / train.grad_accum
        if wired.sharded:
            dist.all_reduce(step_loss, op=dist.ReduceOp.AVG)
        loss_value = step_loss.item()
        if not math.isfinite(loss_value):
            kept = latest_checkpoint(self.run_dir)
            raise LhConvertError(f"the loss became {loss_value} at step {self.step + 1}; stopped "
                                 f"without saving (last good checkpoint: "
                                 f"{kept.name if kept else 'none'}); lower the learning rate")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.grad_clip)
        wired.optimizer.step()
        wired.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += self.tokens_per_step
        self.data_step = data_step
        seconds = time.perf_counter() - tick
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        record = {"kind": "train", "stage": self.stage, "step": self.step, "loss": loss_value,
                  "lr": lr, "grad_norm": float(norm), "tokens": self.tokens,
                  "tokens_per_s": self.tokens_per_step / seconds, "step_s": seconds,
                  "memory_gib": _peak_memory_gib(env)}
        if self.sparsifying:
            dense = self.settings.dense_layer_set(self.num_layers)
            record.update(topk=self.settings.topk, lighthouse_layers=self.num_layers - len(dense))
        return record

    def _sparsify(self) -> None:
        """Apply the sparsifying ramp's settings for this step (``schedule.lighthouse_at``)."""
        wanted = lighthouse_at(self.step, recipe=self.recipe, num_layers=self.num_layers)
        if wanted != self.settings:
            set_lighthouse_settings(self.model, wanted)
            self.settings = wanted

    def validate(self, step: int) -> float:
        """Mean validation loss (and of the last quarter of positions) over ``eval_batches``
        held-out sequences, logged at ``step``."""
        losses, late = [], []
        with torch.no_grad(), self.wired.autocast():
            for index in range(min(self.recipe.train.eval_batches, len(self.validation))):
                ids = self.validation[index].unsqueeze(0).to(self.env.device)
                loss, late_loss = self.wired.loss(ids, late_fraction=LATE_FRACTION)
                losses.append(loss.item())
                late.append(late_loss.item())
        val = sum(losses) / len(losses)
        if self.env.main:
            append_metrics(self.run_dir, {"kind": "eval", "stage": self.stage, "step": step,
                                          "val_loss": val, "val_late_loss": sum(late) / len(late)})
        return val

    def save(self) -> None:
        """A checkpoint of the state after ``self.step`` (every rank takes part in gathering)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=options)
        optim_state = get_optimizer_state_dict(self.model, self.wired.optimizer, options=options)
        train = self.recipe.train
        if self.env.main:
            state = TrainState(stage=self.stage, step=self.step, tokens=self.tokens,
                               data_step=self.data_step, stage1_steps=train.stage1_steps,
                               recovery_steps=train.recovery_steps,
                               model_fingerprint=self.fingerprint)
            save_checkpoint(self.run_dir, model_state=model_state, optim_state=optim_state,
                            state=state, keep=train.keep_checkpoints)
        if self.wired.sharded:
            dist.barrier()

    # ---- the loop ---------------------------------------------------------------------------

    def run(self, *, stop_after: int | None = None) -> StageResult:
        """Train to the stage's last step (or ``stop_after`` steps); Ctrl-C saves, then re-raises."""
        train = self.recipe.train
        end = self.last_step if stop_after is None else min(self.last_step, self.step + stop_after)
        if self.at_switch:  # the jump at the switch: stage 1's weights, now with dense attention
            val = self.validate(self.step)
            if self.env.main:
                self.echo(f"at the switch (step {self.step}, stage 1's weights): validation loss "
                          f"{val:.4f} with dense attention{self._stage1_val_text()}")
        bar = _progress_bar(total=end - self.step, desc=self._stage_name(), enabled=self.progress)
        started, last_loss = time.perf_counter(), None
        try:
            while self.step < end:
                record = self.train_step()
                last_loss = record["loss"]
                if self.env.main:
                    append_metrics(self.run_dir, record)
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{record['lr']:.2e}",
                                    tok_s=f"{record['tokens_per_s']:.0f}")
                if self.step % train.eval_every == 0 or self.step == self.last_step:
                    self.validate(self.step)
                if self.step % train.checkpoint_every == 0 or self.step == end:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            if self.step > self.start and latest_checkpoint(self.run_dir) != \
                    checkpoint_path(self.run_dir, self.step):
                self.save()
            if self.env.main:
                self.echo(interrupted_line(self.run_dir, dense=self.stage == DENSE_STAGE,
                                           step=self.step))
            raise
        bar.close()
        if self.env.main:
            plot_run(self.run_dir)
        return StageResult(self.step - self.start, self.step, last_loss,
                           time.perf_counter() - started)

    def _stage_name(self) -> str:
        """Named by what runs: a dense baseline's stage 1 is not a Lighthouse stage."""
        if self.stage == DENSE_STAGE:
            return "stage 2 (recovery)"
        return f"stage 1 ({'Lighthouse' if self.lighthouse_layers else 'dense'})"

    def _stage1_val_text(self) -> str:
        """", X with stage 1's attention" from stage 1's validation at its last step, if logged."""
        last = [r for r in read_metrics(self.run_dir) if r.get("kind") == "eval"
                and r.get("stage") == LIGHTHOUSE_STAGE and r["step"] == self.step]
        return f", {last[-1]['val_loss']:.4f} with stage 1's attention" if last else ""


def _peak_memory_gib(env: Dist) -> float | None:
    if env.device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(env.device) / 2**30


def _progress_bar(*, total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)
