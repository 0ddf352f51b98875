"""Training checkpoints: model, optimizer, schedule position, data position and RNG states.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-NNNNNNN`` holding

- ``model.safetensors``: the full (unsharded) model state dict, float32 master weights;
- ``optimizer.safetensors`` + ``optimizer.json``: every optimizer state tensor, keyed
  ``<parameter name>::<state name>``, and the parameter groups' hyper-parameters;
- ``rng.safetensors``: torch CPU (and CUDA) generator states;
- ``state.json``: stage, step, tokens seen, the data position and the schedule position.

and ``checksums.json``, the sha256 of each of those files, checked on every load (which also
refuses non-finite weights; a save refuses them too, so a checkpoint is always a good one).

No pickles anywhere. Each folder is written under a temporary name and renamed into place, so
a crash or a full disk during a save leaves the previous checkpoints intact; only after the
rename are checkpoints beyond the newest ``keep`` removed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..util.atomic import atomic_directory, bytes_of
from ..util.checksums import verify_checksums, write_checksums
from ..util.errors import LhConvertError
from ..util.interrupts import sigint_deferred
from ..util.formats import first_non_finite, verify_safetensors_dir

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{7})$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Where the checkpoint after optimizer step ``step`` lives: ``checkpoints/step-NNNNNNN``."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:07d}"


@dataclass(frozen=True)
class TrainState:
    """The bookkeeping that, with weights, optimizer and RNG, makes a resume exact."""

    stage: str            # "lighthouse" (stage 1) or "dense" (recovery)
    step: int             # optimizer steps completed, counted across both stages
    tokens: int           # training tokens consumed so far
    data_step: int        # global batches consumed (the data iterator resumes here)
    stage1_steps: int
    recovery_steps: int
    model_fingerprint: str


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1] if found else None


def checkpoint_step(path: Path) -> int:
    """The optimizer step of checkpoint folder ``path`` (``step-NNNNNNN``), from its name."""
    match = _STEP_DIR.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (step-NNNNNNN)")
    return int(match[1])


def prune_checkpoints(run_dir: Path, *, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints of ``run_dir``."""
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _flatten_optimizer(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for name, entries in optim_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{key}"] = value
    return tensors, {"param_groups": optim_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        name, key = flat.rsplit("::", 1)
        state.setdefault(name, {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(run_dir: Path, *, model_state: dict[str, torch.Tensor], optim_state: dict,
                    state: TrainState, keep: int) -> Path:
    """Write one checkpoint atomically, then prune to the newest ``keep``."""
    final = checkpoint_path(run_dir, state.step)
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a save)
        return final
    bad = _non_finite(model_state)
    if bad is not None:
        kept = latest_checkpoint(run_dir)
        raise LhConvertError(f"the weights became non-finite ({bad}) by step {state.step}; stopped "
                             f"without saving (last good checkpoint: "
                             f"{kept.name if kept else 'none'}); lower the learning rate")
    # Clone: tied weights share storage, which safetensors refuses to write twice.
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model_state.items()}
    optim_tensors, optim_meta = _flatten_optimizer(optim_state)
    needed = bytes_of([*weights.values(), *optim_tensors.values()])
    with sigint_deferred():  # a Ctrl-C meanwhile stops the run once this checkpoint is whole
        with atomic_directory(final, needed=needed) as staging:
            save_file(weights, str(staging / "model.safetensors"))
            save_file(optim_tensors, str(staging / "optimizer.safetensors"))
            (staging / "optimizer.json").write_text(json.dumps(optim_meta, indent=1))
            save_file(_rng_state(), str(staging / "rng.safetensors"))
            (staging / "state.json").write_text(json.dumps(asdict(state), indent=2))
            write_checksums(staging)
        prune_checkpoints(run_dir, keep=keep)
    return final


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    state: TrainState
    model_state: dict[str, torch.Tensor]
    optim_state: dict
    rng: dict[str, torch.Tensor]


def load_checkpoint(path: Path) -> LoadedCheckpoint:
    """Read a checkpoint folder; a clear error if any part is missing or corrupt."""
    path = Path(path)
    fix = previous_checkpoint_hint(path)
    try:
        verify_safetensors_dir(path)
        verify_checksums(path, fix=fix)
        state = _train_state(json.loads((path / "state.json").read_text()))
        meta = json.loads((path / "optimizer.json").read_text())
        model_state = load_file(str(path / "model.safetensors"))
        bad = _non_finite(model_state)
        if bad is not None:
            raise LhConvertError(f"checkpoint {path} holds non-finite weights ({bad}); {fix}")
        return LoadedCheckpoint(path=path, state=state, model_state=model_state,
                                optim_state=_unflatten_optimizer(
                                    load_file(str(path / "optimizer.safetensors")), meta),
                                rng=load_file(str(path / "rng.safetensors")))
    except LhConvertError as error:
        if fix in str(error):  # already says what to do
            raise
        raise LhConvertError(f"checkpoint {path} is corrupt: {error}; {fix}") from None
    except (OSError, ValueError, TypeError, KeyError, SafetensorError) as error:
        raise LhConvertError(f"checkpoint {path} is corrupt or incomplete ({type(error).__name__}: "
                             f"{error}); {fix}") from None


def previous_checkpoint_hint(path: Path) -> str:
    """What to do about a bad checkpoint: delete it and resume from the one before it."""
    path = Path(path)
    older = [p for p in checkpoint_dirs(path.parent.parent) if p.name < path.name]
    then = (f"resume from the previous checkpoint ({older[-1].name})" if older
            else "start the stage again from the converted weights")
    return f"delete that folder ({path.name}) to {then}"


def _train_state(raw: object) -> TrainState:
    """``state.json`` read strictly: every field present, with its type."""
    wanted = {field.name: field.type for field in fields(TrainState)}
    if not isinstance(raw, dict) or set(raw) != set(wanted):
        raise ValueError(f"state.json must hold exactly the fields {', '.join(wanted)}")
    for name, kind in wanted.items():
        expected = int if kind == "int" else str
        if type(raw[name]) is not expected:
            raise ValueError(f"state.json field {name} is {raw[name]!r}, not an {kind}"
                             if kind == "int" else f"state.json field {name} is {raw[name]!r}, "
                             f"not a string")
    return TrainState(**raw)


def _non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first tensor holding a NaN or an infinity, as 'NAME has N NaN or infinite values'."""
    found = first_non_finite(tensors)
    return None if found is None else f"{found[0]} has {found[1]} NaN or infinite values"


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
