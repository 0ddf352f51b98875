"""Training checkpoints: model, optimizer, schedule position, data position and RNG states.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-NNNNNNN`` holding

- ``model.safetensors``: the full (unsharded) model state dict, float32 master weights;
- ``optimizer.safetensors`` + ``optimizer.json``: every optimizer state tensor, keyed
  ``<parameter name>::<state name>``, and the parameter groups' hyper-parameters;
- ``rng.safetensors``: torch CPU (and CUDA) generator states;
- ``state.json``: stage, step, tokens seen, the data position and the schedule position.

No pickles anywhere. Each folder is written under a temporary name and renamed into place, so
a crash or a full disk during a save leaves the previous checkpoints intact; only after the
rename are checkpoints beyond the newest ``keep`` removed.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..util.atomic import atomic_directory
from ..util.errors import LhConvertError
from ..util.formats import verify_safetensors_dir

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
    # Clone: tied weights share storage, which safetensors refuses to write twice.
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model_state.items()}
    optim_tensors, optim_meta = _flatten_optimizer(optim_state)
    with atomic_directory(final) as staging:
        save_file(weights, str(staging / "model.safetensors"))
        save_file(optim_tensors, str(staging / "optimizer.safetensors"))
        (staging / "optimizer.json").write_text(json.dumps(optim_meta, indent=1))
        save_file(_rng_state(), str(staging / "rng.safetensors"))
        (staging / "state.json").write_text(json.dumps(asdict(state), indent=2))
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
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
    try:
        verify_safetensors_dir(path)
        state = TrainState(**json.loads((path / "state.json").read_text()))
        meta = json.loads((path / "optimizer.json").read_text())
        return LoadedCheckpoint(path=path, state=state,
                                model_state=load_file(str(path / "model.safetensors")),
                                optim_state=_unflatten_optimizer(
                                    load_file(str(path / "optimizer.safetensors")), meta),
                                rng=load_file(str(path / "rng.safetensors")))
    except LhConvertError as error:
        raise LhConvertError(f"checkpoint {path} is corrupt: {error}; delete that folder to resume "
                             f"from the previous checkpoint") from None
    except (OSError, ValueError, TypeError, KeyError, SafetensorError) as error:
        raise LhConvertError(f"checkpoint {path} is corrupt or incomplete ({type(error).__name__}: "
                             f"{error}); delete that folder to resume from the previous "
                             f"checkpoint") from None


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["torch_cuda"])
