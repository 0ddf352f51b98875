"""``extend`` and ``recover``: convert if needed, pin the recipe and data to the run, train.

The first ``extend`` on a run folder converts the model (as ``convert`` does) and writes
``RUN_DIR/recipe.json`` (the recipe with every override applied, and the data spec). Every
later ``extend`` or ``recover`` on that folder reads it back, so both stages train with one
schedule on one data order; re-running ``extend`` resumes from the newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from ..convert.manifest import MANIFEST_NAME, read_manifest
from ..convert.surgery import convert
from ..util.atomic import write_json_atomic
from ..util.errors import LhConvertError
from ..util.run_lock import run_lock
from .checkpoint import checkpoint_step, latest_checkpoint
from .data import DataSpec
from .distributed import barrier, init_distributed
from .preflight import check_inputs, resolved_data
from .recipes import Recipe, parse_recipe
from .resume_settings import check_resume, record_override
from .trainer import DENSE_STAGE, LIGHTHOUSE_STAGE, StageResult, run_stage

RECIPE_RECORD = "recipe.json"


def read_record(run_dir: Path) -> tuple[Recipe, DataSpec] | None:
    """The recipe and data spec pinned to a run by its first ``extend``, or None."""
    path = Path(run_dir) / RECIPE_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return (parse_recipe(data["recipe"], where=str(path)), DataSpec(**data["data"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise LhConvertError(f"{path} is damaged ({type(error).__name__}: {error}); restore it, "
                             f"or train a new --out") from None


def _write_record(run_dir: Path, recipe: Recipe, data: DataSpec) -> None:
    write_json_atomic(Path(run_dir) / RECIPE_RECORD,
                      {"recipe": recipe.to_dict(), "data": dataclasses.asdict(data)})


def extend(*, recipe: Recipe, out: Path, data: DataSpec, echo: Callable[[str], None],
           progress: bool = True, stop_after: int | None = None,
           override: bool = False) -> StageResult:
    """Stage 1 (Lighthouse): convert ``recipe.model`` into ``out`` unless it is already a run
    of that model, then train or resume to ``recipe.train.stage1_steps``. A resume that changes
    a pinned setting is refused unless ``override`` (then it is logged: ``resume_settings``)."""
    env = init_distributed()
    out = Path(out)
    ctx = recipe.ctx
    data = resolved_data(data)
    check_inputs(recipe=recipe, data=data, world=env.world)  # before a conversion pins them
    if (out / MANIFEST_NAME).is_file():
        manifest = read_manifest(out)
        if manifest.source.get("spec") != recipe.model or manifest.target_context != ctx:
            raise LhConvertError(
                f"{out} holds a run of {manifest.source.get('spec')} at {manifest.target_context} "
                f"tokens, not {recipe.model} at {ctx}; {_new_out_or_restart(out)}")
        if manifest.init["kind"] != recipe.init:
            raise LhConvertError(f"{out} holds a run with {manifest.init['kind']} weights, not "
                                 f"{recipe.init}; {_new_out_or_restart(out)}")
        recorded = read_record(out)
        if recorded is not None:
            recipe, data = _merge_resume(recorded, recipe, data, out)
            newest = latest_checkpoint(out)
            if newest is not None:  # untrained: a restart, which takes any settings
                step = checkpoint_step(newest)
                changes = check_resume(recorded[0], recipe, out=out, override=override,
                                       dense=step >= recorded[0].train.stage1_steps)
                if changes and env.main:
                    echo(record_override(out, changes, step=step))
    elif out.exists() and any(out.iterdir()):
        raise LhConvertError(f"{out} exists and is not an lh-convert run; choose a new --out")
    else:
        if env.main:
            convert(model=recipe.model, ctx=ctx, out=out, rope=recipe.rope,
                    settings=recipe.lighthouse, init=recipe.init, seed=recipe.train.seed)
        barrier(env)
    with run_lock(out, enabled=env.main):
        if env.main:
            _write_record(out, recipe, data)
        barrier(env)
        return run_stage(run_dir=out, recipe=recipe, stage=LIGHTHOUSE_STAGE, data=data, env=env,
                         echo=echo, progress=progress, stop_after=stop_after)


def _new_out_or_restart(out: Path) -> str:
    """The way out of a mismatch: a new folder, or (for a run that never trained) a fresh start."""
    if latest_checkpoint(out) is None:
        return (f"it never completed a step, so delete it (rm -r {out}) and run again to start "
                f"over, or choose a new --out")
    return "choose a new --out"


def _merge_resume(recorded: tuple[Recipe, DataSpec], recipe: Recipe, data: DataSpec,
                  out: Path) -> tuple[Recipe, DataSpec]:
    """On resume the recorded data wins (the data order must not change); step counts may grow.
    A run that never completed a step takes the new inputs: it is a restart, not a resume."""
    old_recipe, old_data = recorded
    if recipe.lighthouse != old_recipe.lighthouse:
        raise LhConvertError(f"{out} was converted with other Lighthouse settings; resume it "
                             f"without changing them, or {_new_out_or_restart(out)}")
    if latest_checkpoint(out) is None:
        return recipe, data
    if data.paths and data != old_data:
        raise LhConvertError(f"{out} was trained on {old_data.paths or 'the built-in corpus'}; "
                             f"resume it without --data, or use a new --out")
    return recipe, old_data


def _checkpoint_step(run_dir: Path) -> int:
    newest = latest_checkpoint(run_dir)
    return 0 if newest is None else checkpoint_step(newest)


def recover(*, run: Path, steps: int | None, echo: Callable[[str], None], cp: int | None = None,
            progress: bool = True, stop_after: int | None = None) -> StageResult:
    """Stage 2 (dense recovery): same weights, same optimizer state, dense SDPA everywhere.

    ``cp`` overrides the recorded context-parallel degree (it changes no result, only the
    split of each sequence over processes).
    """
    env = init_distributed()
    recorded, data = _recorded(run)
    recipe = _with_recovery_steps(recorded, steps)
    with run_lock(run, enabled=env.main):
        if steps is not None and env.main:
            _write_record(run, recipe, data)
        recipe = recipe.with_train(cp=cp)
        return run_stage(run_dir=run, recipe=recipe, stage=DENSE_STAGE, data=data, env=env,
                         echo=echo, progress=progress, stop_after=stop_after)


def _recorded(run: Path) -> tuple[Recipe, DataSpec]:
    recorded = read_record(run)
    if recorded is None:
        read_manifest(run)  # a clearer error when the folder is not a run at all
        raise LhConvertError(f"{run} has no {RECIPE_RECORD}: it was converted but never trained; "
                             f"run `lh-convert extend --out {run} ...` first")
    return recorded


def recovery_recipe(*, run: Path, steps: int | None, cp: int | None = None) -> Recipe:
    """The run's pinned recipe as recovery will use it: ``steps`` recovery steps (recorded as
    ``recovery_fraction``) and the context-parallel degree ``cp``, where given."""
    return _with_recovery_steps(_recorded(run)[0], steps).with_train(cp=cp)


def _with_recovery_steps(recipe: Recipe, steps: int | None) -> Recipe:
    if steps is None:
        return recipe
    if steps < 1:
        raise LhConvertError(f"--steps {steps}: needs at least 1 recovery step")
    return recipe.with_train(recovery_fraction=steps / recipe.train.stage1_steps)
