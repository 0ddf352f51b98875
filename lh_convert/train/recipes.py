"""Training recipes: one TOML file per named recipe (model x target context) in ``recipes/``.

A recipe fills every knob of the two training stages; command-line flags override single
fields. Every field is typed (``Literal`` choices, ``ctx`` an int), and validation errors name
the file, the field, the bad value and what is allowed. This module is configuration only: it
imports no torch and no model code, so listing or checking recipes is instant.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..convert.manifest import Init
from ..convert.rope import RopeMethod
from ..convert.settings import LighthouseSettings
from ..util.errors import LhConvertError
from ..util.paths import shipped_folder
from ..util.units import parse_context

Schedule = Literal["cosine", "linear", "constant"]
Precision = Literal["bf16", "fp32"]
CheckpointingMode = Literal["selective", "full", "none"]
RecoverySchedule = Literal["continue", "rewarm"]
SparsifyLayers = Literal["none", "deepest-first", "shallowest-first"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)
CHECKPOINTING_MODES: tuple[str, ...] = get_args(CheckpointingMode)


def recipes_dir() -> Path:
    """The folder of the named recipes: the repository's ``recipes/``, installed with the package."""
    return shipped_folder("recipes")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and bookkeeping for both stages (SPEC §5).

    ``recovery_fraction``: recovery steps as a share of stage-1 steps when ``recover`` gets no
    ``--steps`` (default 0.4: the paper ran 4k-6k recovery steps after 10k-12k).
    The learning-rate schedule spans both stages: warmup, then decay over
    ``stage1_steps + recovery steps`` to ``lr * min_lr_ratio``.
    ``cp``: context-parallel degree, the processes that split one sequence
    (``docs/context_parallel.md``); all processes form a (world/cp) x cp mesh.
    ``activation_checkpointing``: ``"selective"`` (``true`` in a TOML file: keep the attention
    kernels' outputs, recompute the rest), ``"full"`` or ``"none"`` (``false``); see
    ``train/activation_checkpointing.py``. ``deterministic``: ``torch.use_deterministic_algorithms``
    for the run, so SDPA's backward is deterministic too (slower: about 1.7x per SDPA backward
    on an H200; docs/benchmarks.md).

    Levers for converting checkpoints pre-trained dense (issue #18; ``train/schedule.py``):
    ``recovery_schedule``: ``"continue"`` (one schedule over both stages, recovery near its
    floor) or ``"rewarm"`` (stage 1 decays over its own steps; recovery warms up again over
    ``recovery_warmup_steps`` to ``lr * recovery_peak`` and decays over its steps).
    ``sparsify_steps``: over stage 1's first N steps, start closer to dense and reach the
    recipe's Lighthouse settings: from ``sparsify_from_topk`` (0: the recipe's top-k) and/or
    with the Lighthouse layers switched on a few at a time (``sparsify_layers``).
    """

    micro_batch_size: int = 1
    grad_accum: int = 1
    stage1_steps: int = 1000
    recovery_fraction: float = 0.4
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: Precision = "bf16"
    activation_checkpointing: CheckpointingMode = "selective"
    compile: bool = False
    loss_chunk: int = 4096
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 100
    eval_batches: int = 2
    seed: int = 0
    cp: int = 1
    deterministic: bool = False
    recovery_schedule: RecoverySchedule = "continue"
    recovery_warmup_steps: int = 0
    recovery_peak: float = 1.0
    sparsify_steps: int = 0
    sparsify_from_topk: int = 0
    sparsify_layers: SparsifyLayers = "none"

    @property
    def recovery_steps(self) -> int:
        return max(1, round(self.stage1_steps * self.recovery_fraction))

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.recovery_steps

    def problem(self) -> str | None:
        """The first value out of range, as ``name=value: what is allowed``; None when all fit."""
        positive = ("micro_batch_size", "grad_accum", "stage1_steps", "loss_chunk",
                    "checkpoint_every", "keep_checkpoints", "eval_every", "eval_batches", "cp")
        for name in positive:
            if getattr(self, name) < 1:
                return f"{name}={getattr(self, name)}: needs an integer >= 1"
        if not 0 < self.lr < 1:
            return f"lr={self.lr}: needs 0 < lr < 1 (try 3e-4)"
        if not 0 <= self.min_lr_ratio <= 1:
            return f"min_lr_ratio={self.min_lr_ratio}: needs a value in [0, 1]"
        if not 0 < self.recovery_fraction <= 10:
            return f"recovery_fraction={self.recovery_fraction}: needs a value in (0, 10] (try 0.4)"
        for name in ("warmup_steps", "recovery_warmup_steps", "sparsify_steps",
                     "sparsify_from_topk"):
            if getattr(self, name) < 0:
                return f"{name}={getattr(self, name)}: needs an integer >= 0"
        if not 0 < self.recovery_peak <= 10:
            return f"recovery_peak={self.recovery_peak}: needs a value in (0, 10] (a share of lr)"
        if self.recovery_warmup_steps > self.recovery_steps:
            return (f"recovery_warmup_steps={self.recovery_warmup_steps}: more than the "
                    f"{self.recovery_steps} recovery steps")
        if self.sparsify_steps > self.stage1_steps:
            return (f"sparsify_steps={self.sparsify_steps}: more than the {self.stage1_steps} "
                    f"stage-1 steps")
        if self.sparsify_steps and not (self.sparsify_from_topk or
                                        self.sparsify_layers != "none"):
            return (f"sparsify_steps={self.sparsify_steps} sparsifies nothing: set "
                    f"sparsify_from_topk or sparsify_layers")
        for name, allowed in (("schedule", SCHEDULES), ("precision", PRECISIONS),
                              ("activation_checkpointing", CHECKPOINTING_MODES),
                              ("recovery_schedule", get_args(RecoverySchedule)),
                              ("sparsify_layers", get_args(SparsifyLayers))):
            if getattr(self, name) not in allowed:
                return f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}"
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            return f"beta1={self.beta1}, beta2={self.beta2}: need values in [0, 1)"
        if self.grad_clip <= 0:
            return f"grad_clip={self.grad_clip}: needs a value > 0 (try 1.0)"
        if self.cp > 1 and self.compile:
            return (f"cp={self.cp} with compile=true: context parallelism runs eagerly; "
                    f"set compile = false")
        return None


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    model: str
    ctx: int
    rope: RopeMethod = "theta"
    init: Init = "pretrained"  # or "random": the model's architecture trained from scratch
    lighthouse: LighthouseSettings = field(default_factory=LighthouseSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def with_train(self, **overrides: Any) -> Recipe:
        """A copy with some training fields replaced (from command-line flags), re-validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        updated = dataclasses.replace(self, train=dataclasses.replace(self.train, **given))
        problem = updated.train.problem()
        if problem is not None:
            raise LhConvertError(f"invalid training setting: {problem}")
        return updated

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "model": self.model,
                "ctx": self.ctx, "rope": self.rope, "init": self.init,
                "lighthouse": self.lighthouse.to_dict(), "train": dataclasses.asdict(self.train)}


# ---- parsing -----------------------------------------------------------------------------------

_TABLES = {"lighthouse": LighthouseSettings, "train": TrainSettings}
_REQUIRED = ("name", "description", "model", "ctx")


def _describe(hint: Any) -> str:
    """What a field accepts, in the words of a TOML file."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(hint))
    if typing.get_origin(hint) is tuple:
        return "a list of integers, e.g. [0, 1, -2, -1]"
    return {int: "an integer", float: "a number", bool: "true or false",
            str: "a string"}.get(hint, getattr(hint, "__name__", str(hint)))


def _value(name: str, value: Any, hint: Any, *, where: str) -> Any:
    """``value`` checked against the field's type ``hint`` (and normalized), or a one-line error."""
    if hint is int and name == "ctx":
        return parse_context(value, what=f"{where}: ctx")
    if name == "activation_checkpointing" and isinstance(value, bool):
        return "selective" if value else "none"  # the TOML shorthand true / false
    origin = typing.get_origin(hint)
    if origin is Literal:
        ok = isinstance(value, str) and value in get_args(hint)
    elif origin is tuple:
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise LhConvertError(f"{where}: field {name} = {value!r} must be {_describe(hint)}")
    return value


def _build(cls: type, data: Any, *, where: str) -> Any:
    """An instance of the dataclass ``cls`` from a TOML table, every field type-checked."""
    if not isinstance(data, dict):
        raise LhConvertError(f"{where} must be a table of settings (a [section] of the file), "
                             f"not {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise LhConvertError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(sorted(known))}")
    values = {}
    for name, value in data.items():
        table = _TABLES.get(name) if cls is Recipe else None
        values[name] = (_build(table, value, where=f"{where} [{name}]") if table is not None
                        else _value(name, value, hints[name], where=where))
    return cls(**values)


def parse_recipe(data: dict[str, Any], *, where: str) -> Recipe:
    """Validate a recipe mapping (as read from TOML, or a run's recorded ``recipe.json``)."""
    for required in _REQUIRED:
        if required not in data:
            raise LhConvertError(f"{where}: missing field {required!r}")
    recipe = _build(Recipe, data, where=where)
    try:
        recipe.lighthouse.kernel  # noqa: B018 - validates the kernel parameters
    except ValueError as error:
        raise LhConvertError(f"{where}: [lighthouse] {error}") from None
    problem = recipe.train.problem()
    if problem is not None:
        raise LhConvertError(f"{where}: [train] {problem}")
    start = recipe.train.sparsify_from_topk
    if start:
        trouble = f"it must exceed the target topk {recipe.lighthouse.topk}"
        if start > recipe.lighthouse.topk:
            try:
                trouble = dataclasses.replace(recipe.lighthouse.kernel, topk=start
                                              ).length_problem(recipe.ctx)
            except ValueError as error:
                trouble = str(error)
        if trouble:
            raise LhConvertError(f"{where}: [train] sparsify_from_topk={start}: {trouble}")
    return recipe


def available_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(recipes_dir().glob("*.toml"))}


def load_recipe(name_or_path: str) -> Recipe:
    """A recipe by name (``recipes/<name>.toml``) or by file path."""
    recipes = available_recipes()
    path = recipes.get(name_or_path, Path(name_or_path))
    if name_or_path not in recipes and path.suffix != ".toml":
        raise LhConvertError(f"unknown recipe {name_or_path!r}; choose one of "
                             f"{', '.join(recipes)} or pass a .toml file")
    if not path.is_file():
        raise LhConvertError(f"recipe file {path} does not exist; pass a .toml file or a recipe name")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise LhConvertError(f"recipe {path} is not UTF-8 text (byte {error.start}); save it as "
                             f"UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise LhConvertError(f"recipe {path} is not valid TOML ({error})") from None
    return parse_recipe(data, where=str(path))
