"""Training recipes: one TOML file per named recipe (model x target context) in ``recipes/``.

A recipe fills every knob of the two training stages; command-line flags override single
fields. Validation errors name the file, the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attention import LighthouseSettings
from .checkpointing import MODES as CHECKPOINTING_MODES
from .checkpointing import checkpointing_mode
from .errors import LhConvertError
from .manifest import INITS
from .rope import ROPE_METHODS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation and bookkeeping for both stages (SPEC §5).

    ``recovery_fraction``: recovery steps as a share of stage-1 steps when ``recover`` gets no
    ``--steps`` (default 0.4: the paper ran 4k-6k recovery steps after 10k-12k).
    The learning-rate schedule spans both stages: warmup, then decay over
    ``stage1_steps + recovery steps`` to ``lr * min_lr_ratio``.
    ``cp``: context-parallel degree, the processes that split one sequence
    (``docs/context_parallel.md``); all processes form a (world/cp) x cp mesh.
    ``activation_checkpointing``: ``"selective"`` (or ``true``: keep the attention kernels'
    outputs, recompute the rest), ``"full"`` or ``"none"`` (or ``false``); see
    ``lh_convert/checkpointing.py``. ``deterministic``: ``torch.use_deterministic_algorithms``
    for the run, so SDPA's backward is deterministic too (slower: about 1.7x per SDPA backward
    on an H200; docs/benchmarks.md).
    """

    micro_batch_size: int = 1
    grad_accum: int = 1
    stage1_steps: int = 1000
    recovery_fraction: float = 0.4
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "bf16"
    activation_checkpointing: bool | str = True
    compile: bool = False
    loss_chunk: int = 4096
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    eval_every: int = 100
    eval_batches: int = 2
    seed: int = 0
    cp: int = 1
    deterministic: bool = False

    @property
    def checkpointing_mode(self) -> str:
        """``activation_checkpointing`` as one of ``checkpointing.MODES``."""
        return checkpointing_mode(self.activation_checkpointing)

    @property
    def recovery_steps(self) -> int:
        return max(1, round(self.stage1_steps * self.recovery_fraction))

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.recovery_steps

    def problem(self) -> str | None:
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
        if self.warmup_steps < 0:
            return f"warmup_steps={self.warmup_steps}: needs an integer >= 0"
        if self.schedule not in SCHEDULES:
            return f"schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}"
        if self.precision not in PRECISIONS:
            return f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}"
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            return f"beta1={self.beta1}, beta2={self.beta2}: need values in [0, 1)"
        if self.checkpointing_mode not in CHECKPOINTING_MODES:
            return (f"activation_checkpointing={self.activation_checkpointing!r}: choose one of "
                    f"{', '.join(CHECKPOINTING_MODES)} (or true/false)")
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
    ctx: str
    rope: str = "theta"
    init: str = "pretrained"  # or "random": the model's architecture trained from scratch
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
                "lighthouse": self.lighthouse.to_dict(),
                "train": dataclasses.asdict(self.train)}


def _build(cls: type, data: dict[str, Any], *, where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise LhConvertError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    for name, value in data.items():
        expected = type(getattr(cls(), name)) if cls is not Recipe else str
        if name in ("lighthouse", "train") or expected is tuple:
            continue
        if name == "activation_checkpointing" and isinstance(value, (bool, str)):
            continue  # a mode name or a bool; TrainSettings.problem checks which
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise LhConvertError(f"{where}: field {name}={value!r} must be {expected.__name__}")
    return cls(**data)


def parse_recipe(data: dict[str, Any], *, where: str) -> Recipe:
    """Validate a recipe mapping (as read from TOML)."""
    data = dict(data)
    for required in ("name", "description", "model", "ctx"):
        if required not in data:
            raise LhConvertError(f"{where}: missing field {required!r}")
    if data.get("rope", "theta") not in ROPE_METHODS:
        raise LhConvertError(f"{where}: rope={data['rope']!r}; choose one of {', '.join(ROPE_METHODS)}")
    if data.get("init", "pretrained") not in INITS:
        raise LhConvertError(f"{where}: init={data['init']!r}; choose one of {', '.join(INITS)}")
    try:
        lighthouse = LighthouseSettings.from_dict(data.pop("lighthouse", {}))
        lighthouse.kernel  # noqa: B018 - validates the kernel parameters
    except (TypeError, ValueError) as error:
        raise LhConvertError(f"{where}: [lighthouse] {error}") from None
    train = _build(TrainSettings, data.pop("train", {}), where=f"{where} [train]")
    problem = train.problem()
    if problem is not None:
        raise LhConvertError(f"{where}: [train] {problem}")
    recipe = _build(Recipe, data, where=where)
    return dataclasses.replace(recipe, lighthouse=lighthouse, train=train)


def available_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(RECIPES_DIR.glob("*.toml"))}


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
    except tomllib.TOMLDecodeError as error:
        raise LhConvertError(f"recipe {path} is not valid TOML ({error})") from None
    return parse_recipe(data, where=str(path))
