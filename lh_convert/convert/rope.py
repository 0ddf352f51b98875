"""Plan and apply the RoPE change that lets a model attend over a longer context.

The change is written into a transformers config *before* the model is built, so the rotary
embedding module computes the new inverse frequencies itself; nothing is patched afterwards.
In transformers 5.x the RoPE settings live in ``config.rope_parameters``, a dict with
``rope_type``, ``rope_theta`` and the type's own keys (``factor``,
``original_max_position_embeddings``, ...); ``transformers.modeling_rope_utils`` computes the
frequencies and validates the keys.

Methods (``s = target_context / original_context``, ``d`` = rotary dimension, i.e. the head
dimension times ``partial_rotary_factor``):

``theta`` (the default)
    Raise the base with the NTK-aware rule ``theta' = theta * s ** (d / (d - 2))`` and keep the
    plain ``"default"`` RoPE type. Frequency ``i`` is ``theta ** (-2i / d)``: the highest one
    (``i = 0``, which encodes local order) is exactly unchanged, and the lowest one
    (``i = d/2 - 1``) is divided by exactly ``s``, so the longest wavelength stretches to cover
    the new context while short-range position information stays as pre-trained. With continued
    pre-training at the target length, raising the base frequency ("ABF", Xiong et al. 2023,
    "Effective Long-Context Scaling of Foundation Models") matches or beats position
    interpolation; Code Llama and Llama 3's long-context stage extend context the same way.
    And the exported checkpoint uses the ``"default"`` RoPE type, which every inference engine
    supports, with no scaling code path to get wrong.
``linear``
    Position interpolation (Chen et al. 2023): ``rope_type "linear"``, ``factor s``; every
    frequency is divided by ``s``.
``dynamic``
    Dynamic NTK: ``rope_type "dynamic"``, ``factor s``. transformers recomputes the base in the
    forward pass once a sequence is longer than ``config.max_position_embeddings``, as
    ``theta * (s * L / max_position_embeddings - (s - 1)) ** (d / (d - 2))`` for length ``L``.
    transformers reads no ``original_max_position_embeddings`` for this type (its validator
    calls that key unrecognized): the reference length *is* ``max_position_embeddings``. So for
    this method ``max_position_embeddings`` stays at the original context (see
    ``RopeChange.max_position_embeddings``); raising it to the target would leave the
    frequencies untouched at every length up to the target.
``yarn``
    YaRN (Peng et al. 2023): ``rope_type "yarn"``, ``factor s``,
    ``original_max_position_embeddings`` = the original context; ``beta_fast``, ``beta_slow``
    and ``attention_factor`` are left to transformers' defaults (32, 1, ``0.1 ln s + 1``).
``llama3``
    Llama 3.1's wavelength bands: ``rope_type "llama3"``, ``factor s``, ``low_freq_factor 1``,
    ``high_freq_factor 4``, ``original_max_position_embeddings`` = the original context.
``none``
    Leave ``rope_parameters`` untouched; only ``max_position_embeddings`` changes. For models
    whose config already claims at least the target context (Llama-3.2-1B claims 131072).

A source config that already scales RoPE (a ``rope_type`` other than ``"default"``, e.g.
Llama 3.1's ``llama3`` with factor 8) composes as follows: ``theta`` raises its ``rope_theta``
by the NTK rule and keeps the type and every other field; the method of the same type multiplies
its ``factor`` by ``s`` and keeps its ``original_max_position_embeddings``; ``none`` leaves it
alone; any other method is refused with an ``LhConvertError``.

The original context is what the source config claims, ``config.max_position_embeddings``.
Model families are told apart only by config fields (``head_dim``, ``rope_parameters``), never
by model names.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..util.errors import LhConvertError

RopeMethod = Literal["theta", "linear", "dynamic", "yarn", "llama3", "none"]
ROPE_METHODS: tuple[str, ...] = get_args(RopeMethod)
DEFAULT_ROPE_METHOD = "theta"

LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0

# Methods that set a `factor` and name a transformers rope_type of the same spelling.
_FACTOR_METHODS: tuple[str, ...] = ("linear", "dynamic", "yarn", "llama3")


@dataclass(frozen=True)
class RopeChange:
    """A planned RoPE change, made by ``plan_rope_change`` and written by ``apply_rope_change``.

    Attributes:
        method: one of ``ROPE_METHODS``.
        original_context: the context the source config claims (its ``max_position_embeddings``).
        target_context: the context to train and export at.
        scale: ``target_context / original_context``.
        before: ``config.rope_parameters`` before the change (a plain dict copy).
        after: ``config.rope_parameters`` after the change (a plain dict).
        max_position_embeddings: the value written to ``config.max_position_embeddings``:
            ``target_context``, except when the resulting ``rope_type`` is ``"dynamic"``,
            where transformers measures sequence length against this field and it keeps the
            source value (see the module docstring).
    """

    method: str
    original_context: int
    target_context: int
    scale: float
    before: dict[str, Any]
    after: dict[str, Any]
    max_position_embeddings: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable record of the change, for the run manifest."""
        return {
            "method": self.method,
            "original_context": self.original_context,
            "target_context": self.target_context,
            "scale": self.scale,
            "max_position_embeddings": self.max_position_embeddings,
            "before": copy.deepcopy(self.before),
            "after": copy.deepcopy(self.after),
            "description": self.describe(),
        }

    def describe(self) -> str:
        """Return one human-readable line.

        For example ``theta 10000 -> 82684.6 (NTK-aware base for 8x); context 8192 -> 65536``.
        """
        context = f"context {self.original_context} -> {self.target_context}"
        source_type = _rope_type(self.before)
        if self.method == "none":
            line = f"RoPE unchanged ({_describe_type(self.before)}); {context}"
            if self.target_context > self.original_context:
                line += (
                    f" (beyond the {self.original_context} the config claims: later positions"
                    " are extrapolated)"
                )
            return line
        scale = f"{_number(self.scale)}x"
        if self.method == "theta":
            on_top = "" if source_type == "default" else f", keeping {_describe_type(self.before)}"
            return (
                f"theta {_number(self.before['rope_theta'])} -> {_number(self.after['rope_theta'])}"
                f" (NTK-aware base for {scale}{on_top}); {context}"
            )
        if source_type == self.method:
            return (
                f"{self.method} factor {_number(self.before['factor'])} -> "
                f"{_number(self.after['factor'])} ({scale} on top of the source's {self.method}"
                f" scaling); {context}"
            )
        if self.method == "linear":
            label = "linear position interpolation"
        elif self.method == "dynamic":
            label = (
                "dynamic NTK, frequencies recomputed for sequences longer than"
                f" max_position_embeddings {self.max_position_embeddings}"
            )
        elif self.method == "yarn":
            label = (
                "YaRN, original_max_position_embeddings"
                f" {self.after['original_max_position_embeddings']}"
            )
        else:
            label = (
                "llama3 wavelength bands, low_freq_factor"
                f" {_number(self.after['low_freq_factor'])}, high_freq_factor"
                f" {_number(self.after['high_freq_factor'])}"
            )
        factor = _number(self.after["factor"])
        return f"{self.method} factor {factor} ({label}); {context}"


def plan_rope_change(
    config: Any, *, target_context: int, method: str = DEFAULT_ROPE_METHOD
) -> RopeChange:
    """Plan the RoPE change that takes ``config`` to ``target_context`` tokens.

    The config is only read. See the module docstring for what each method writes and how a
    source config that already scales RoPE composes.

    Args:
        config: a transformers config with ``rope_parameters`` (Llama, Mistral, Qwen2, Qwen3).
        target_context: the context to train and export at, in tokens.
        method: one of ``ROPE_METHODS``.

    Returns:
        The planned change; pass it to ``apply_rope_change``.

    Raises:
        LhConvertError: an unknown method; a target context that is not larger than the model's
            context with a method other than ``none``; a method that cannot compose with the
            source config's existing RoPE scaling; a config without flat ``rope_parameters``.
    """
    if method not in ROPE_METHODS:
        raise LhConvertError(
            f"unknown --rope {method!r}; pass one of: {', '.join(ROPE_METHODS)}"
        )
    if type(target_context) is not int or target_context < 1:  # bool is an int subclass
        raise LhConvertError(f"--ctx must be a positive integer, got {target_context!r}")
    before = _read_rope_parameters(config)
    original_context = _original_context(config)
    scale = target_context / original_context
    source_type = _rope_type(before)

    if method == "none":
        after = copy.deepcopy(before)
    else:
        if target_context < original_context:
            raise LhConvertError(
                f"--ctx {target_context} is smaller than the model's context {original_context};"
                f" pass --ctx > {original_context}, or --rope none to train at a length the"
                " model already supports"
            )
        if target_context == original_context:
            raise LhConvertError(
                f"--ctx {target_context} equals the model's context {original_context}, so"
                f" --rope {method} has nothing to scale; pass a larger --ctx, or --rope none to"
                " keep RoPE as it is"
            )
        if method == "theta":
            after = copy.deepcopy(before)
            after["rope_theta"] = _ntk_aware_theta(
                _rope_theta(before), scale=scale, rotary_dim=_rotary_dim(config, before)
            )
        elif source_type == "default":
            after = _scaled_parameters(
                before, method=method, scale=scale, original_context=original_context
            )
        elif source_type == method:
            after = copy.deepcopy(before)
            after["factor"] = float(before["factor"]) * scale
        else:
            raise LhConvertError(
                f"the source config already uses {source_type} RoPE scaling"
                f" ({_describe_type(before)}), which --rope {method} cannot stack on; pass"
                f" {_composable_methods(source_type)}"
            )

    if _rope_type(after) == "dynamic":
        max_position_embeddings = original_context
    else:
        max_position_embeddings = target_context
    return RopeChange(
        method=method,
        original_context=original_context,
        target_context=target_context,
        scale=scale,
        before=before,
        after=after,
        max_position_embeddings=max_position_embeddings,
    )


def apply_rope_change(config: Any, change: RopeChange) -> None:
    """Write ``change`` into ``config``, before the model is built from it.

    Sets ``config.rope_parameters`` to a copy of ``change.after`` and
    ``config.max_position_embeddings`` to ``change.max_position_embeddings`` (the target
    context for every resulting rope type but ``"dynamic"``), then runs transformers' own RoPE
    validation so a bad combination fails here rather than at ``save_pretrained``.

    Raises:
        LhConvertError: the config no longer matches what the change was planned from (for
            example, the change was already applied), or transformers rejects the result.
    """
    current = _read_rope_parameters(config)
    if current != change.before or _original_context(config) != change.original_context:
        raise LhConvertError(
            "the config's RoPE settings changed since the RoPE change was planned (was it already"
            " applied?); plan again from the source config with plan_rope_change"
        )
    config.rope_parameters = copy.deepcopy(change.after)
    config.max_position_embeddings = change.max_position_embeddings
    try:
        config.validate_rope()
    except (KeyError, ValueError) as error:
        raise LhConvertError(
            f"transformers rejected the new RoPE parameters {change.after}: {error}; pick another"
            " --rope method"
        ) from error


def _read_rope_parameters(config: Any) -> dict[str, Any]:
    """Return a plain deep copy of the config's flat ``rope_parameters``."""
    parameters = getattr(config, "rope_parameters", None)
    if not parameters:
        raise LhConvertError(
            f"{type(config).__name__} has no rope_parameters; lh-convert extends the context of"
            " RoPE models only (load the config with transformers >= 5)"
        )
    nested: list[str] = []
    if hasattr(config, "nested_rope_parameter_keys"):
        nested = config.nested_rope_parameter_keys(parameters)
    if nested:
        raise LhConvertError(
            f"{type(config).__name__} has per-layer-type RoPE parameters ({', '.join(nested)});"
            " lh-convert supports one global rope_parameters dict only"
        )
    return copy.deepcopy(dict(parameters))


def _original_context(config: Any) -> int:
    """Return the context the config claims, ``max_position_embeddings``."""
    context = getattr(config, "max_position_embeddings", None)
    if not isinstance(context, int) or context <= 0:
        raise LhConvertError(
            f"{type(config).__name__}.max_position_embeddings is {context!r}; it must be a"
            " positive integer to know the model's context"
        )
    return context


def _rope_type(parameters: dict[str, Any]) -> str:
    """Return the rope type of a ``rope_parameters`` dict (``type`` is the legacy spelling)."""
    return str(parameters.get("rope_type", parameters.get("type", "default")))


def _rope_theta(parameters: dict[str, Any]) -> float:
    """Return ``rope_theta``, which transformers' standardization always fills in."""
    if parameters.get("rope_theta") is None:
        raise LhConvertError(
            f"rope_parameters {parameters} has no rope_theta; set it in the source config"
        )
    return float(parameters["rope_theta"])


def _rotary_dim(config: Any, parameters: dict[str, Any]) -> int:
    """Return the rotary dimension ``d``: head dim times ``partial_rotary_factor``.

    The head dim is ``config.head_dim`` when set (Qwen3 sets it independently of the hidden
    size), else ``hidden_size // num_attention_heads``; this is how transformers computes it.
    """
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = parameters.get("partial_rotary_factor")
    if partial is None:
        partial = getattr(config, "partial_rotary_factor", None) or 1.0
    rotary_dim = int(head_dim * partial)
    if rotary_dim <= 2:
        raise LhConvertError(
            f"rotary dimension {rotary_dim} is too small for NTK-aware scaling (needs > 2);"
            " pass --rope linear or --rope yarn"
        )
    return rotary_dim


def _ntk_aware_theta(theta: float, *, scale: float, rotary_dim: int) -> float:
    """Return ``theta * scale ** (d / (d - 2))``: the lowest frequency divides by ``scale``."""
    return theta * scale ** (rotary_dim / (rotary_dim - 2))


def _scaled_parameters(
    before: dict[str, Any], *, method: str, scale: float, original_context: int
) -> dict[str, Any]:
    """Return the ``rope_parameters`` of a factor method applied to a default-RoPE config."""
    after = copy.deepcopy(before)
    after.pop("type", None)
    after["rope_type"] = method
    after["factor"] = float(scale)
    if method in ("yarn", "llama3"):
        after["original_max_position_embeddings"] = original_context
    if method == "llama3":
        after["low_freq_factor"] = LLAMA3_LOW_FREQ_FACTOR
        after["high_freq_factor"] = LLAMA3_HIGH_FREQ_FACTOR
    return after


def _composable_methods(source_type: str) -> str:
    """Return the ``--rope`` choices that compose with a source rope type, as a phrase."""
    choices = ["--rope theta (raise its base)"]
    if source_type in _FACTOR_METHODS:
        choices.append(f"--rope {source_type} (multiply its factor)")
    choices.append("--rope none (keep it as is)")
    return ", ".join(choices[:-1]) + ", or " + choices[-1]


def _describe_type(parameters: dict[str, Any]) -> str:
    """Return e.g. ``llama3 factor 8`` or ``default, theta 500000`` for a rope_parameters dict."""
    rope_type = _rope_type(parameters)
    if parameters.get("factor") is not None:
        return f"{rope_type} factor {_number(parameters['factor'])}"
    if parameters.get("rope_theta") is not None:
        return f"{rope_type}, theta {_number(parameters['rope_theta'])}"
    return rope_type


def _number(value: float) -> str:
    """Format a number compactly: ``10000``, ``82684.6``, ``1.104e+06``, ``2.5``."""
    return f"{float(value):.6g}" if float(value) < 1e6 else f"{float(value):.4g}"
