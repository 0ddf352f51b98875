"""What changes with the step: the learning rate, and (for a sparsifying stage 1) the Lighthouse
settings. Pure functions of the step and the recipe, so a resumed run follows the same path."""

from __future__ import annotations

import dataclasses
import math

from ..convert.settings import LighthouseSettings
from .recipes import Recipe


def _cycle(step: int, *, peak: float, warmup: int, total: int, floor: float,
           schedule: str) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then ``schedule`` down to ``floor``
    at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return peak - (peak - floor) * progress
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def learning_rate(step: int, *, recipe: Recipe) -> float:
    """The learning rate of optimizer step ``step`` (counted over both stages).

    ``recovery_schedule = "continue"``: one warmup, then the decay over both stages to
    ``lr * min_lr_ratio``. ``"rewarm"``: stage 1 decays over its own steps; recovery warms up
    again to ``lr * recovery_peak`` and decays over its steps to the same floor.
    """
    train = recipe.train
    floor = train.lr * train.min_lr_ratio
    if train.recovery_schedule == "rewarm":
        if step >= train.stage1_steps:
            return _cycle(step - train.stage1_steps, peak=train.lr * train.recovery_peak,
                          warmup=train.recovery_warmup_steps, total=train.recovery_steps,
                          floor=floor, schedule=train.schedule)
        return _cycle(step, peak=train.lr, warmup=train.warmup_steps, total=train.stage1_steps,
                      floor=floor, schedule=train.schedule)
    return _cycle(step, peak=train.lr, warmup=train.warmup_steps, total=train.total_steps,
                  floor=floor, schedule=train.schedule)


def lighthouse_at(step: int, *, recipe: Recipe, num_layers: int) -> LighthouseSettings:
    """The Lighthouse settings of stage-1 step ``step`` (0-based): the recipe's own, except
    during ``sparsify_steps``, where they start closer to dense and reach the recipe's at the
    ramp's end.

    - ``sparsify_from_topk``: top-k falls from that budget to the recipe's, geometrically, in
      budgets valid at the recipe's context (``topk/tile`` must divide the coarsest level);
    - ``sparsify_layers``: the Lighthouse layers are switched on in equal groups over the
      ramp, deepest or shallowest first (the others run dense until their turn).
    """
    train, target = recipe.train, recipe.lighthouse
    if not train.sparsify_steps or step >= train.sparsify_steps:
        return target
    progress = (step + 1) / (train.sparsify_steps + 1)  # reaches the target after the ramp
    settings = target
    if train.sparsify_from_topk:
        settings = dataclasses.replace(settings, topk=_topk_between(
            train.sparsify_from_topk, target, ctx=recipe.ctx, progress=progress))
    if train.sparsify_layers != "none":
        dense = target.dense_layer_set(num_layers)
        light = [layer for layer in range(num_layers) if layer not in dense]
        if train.sparsify_layers == "deepest-first":
            light.reverse()
        switched_on = light[:max(1, math.ceil(len(light) * progress))] if light else []
        settings = dataclasses.replace(
            settings, dense_layers=tuple(layer for layer in range(num_layers)
                                         if layer not in switched_on))
    return settings


def _topk_between(start: int, target: LighthouseSettings, *, ctx: int, progress: float) -> int:
    """The valid budget nearest below the geometric point ``start^(1-progress) * topk^progress``."""
    wanted = start ** (1 - progress) * target.topk ** progress
    kernel = target.kernel
    valid = [k for k in range(target.tile, start + 1, target.tile)
             if dataclasses.replace(kernel, topk=k).length_problem(ctx) is None
             and target.topk <= k <= start]
    return max((k for k in valid if k <= wanted), default=target.topk)
