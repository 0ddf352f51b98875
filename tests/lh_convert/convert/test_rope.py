"""Tests for lh_convert.convert.rope: the planned config change yields the published RoPE frequencies.

Each test changes a tiny config, builds the model from it with transformers, and compares the
built rotary embedding with formulas written out here from the papers, in float64.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from lh_convert.util.errors import LhConvertError
from lh_convert.convert.rope import (
    DEFAULT_ROPE_METHOD,
    ROPE_METHODS,
    RopeChange,
    apply_rope_change,
    plan_rope_change,
)

# arch -> (config class, extra config kwargs, rotary dim d). Qwen3 sets head_dim apart from
# hidden_size // num_attention_heads (64 // 4 = 16), which the rotary dim must follow.
ARCHS: dict[str, tuple[type, dict[str, Any], int]] = {
    "llama": (LlamaConfig, {}, 16),
    "mistral": (MistralConfig, {}, 16),
    "qwen2": (Qwen2Config, {}, 16),
    "qwen3": (Qwen3Config, {"head_dim": 32}, 32),
}
ORIGINAL = 256
TARGET = 2048  # s = 8
SCALE = TARGET / ORIGINAL
THETA = 10000.0
# float32 frequencies from transformers against float64 formulas.
RTOL = 1e-5


def tiny_config(
    arch: str, *, max_position_embeddings: int = ORIGINAL, rope_parameters: dict | None = None
) -> Any:
    """A two-layer config of the given family with default RoPE unless told otherwise."""
    config_class, extra, _ = ARCHS[arch]
    return config_class(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=max_position_embeddings,
        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": THETA},
        **extra,
    )


def build_rotary(config: Any) -> torch.nn.Module:
    """Build the model from the config, as the converter does, and return its rotary embedding."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).model.rotary_emb


def changed_config(arch: str, *, method: str, target: int = TARGET, **config_kwargs: Any) -> Any:
    config = tiny_config(arch, **config_kwargs)
    apply_rope_change(config, plan_rope_change(config, target_context=target, method=method))
    return config


# Reference formulas, written from the papers.


def default_inv_freq(theta: float, d: int) -> torch.Tensor:
    """RoPE (Su et al. 2021): frequency of pair i is theta ** (-2i / d)."""
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def ntk_theta(theta: float, s: float, d: int) -> float:
    """NTK-aware base (bloc97; ABF): the lowest frequency, i = d/2 - 1, divides by exactly s."""
    return theta * s ** (d / (d - 2))


def yarn_reference(theta: float, d: int, s: float, original: int) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023), "NTK-by-parts" with beta_fast = 32, beta_slow = 1.

    Pair i turns r = original / wavelength_i times over the original context. Pairs turning more
    than beta_fast times keep their frequency, pairs turning fewer than beta_slow times are
    interpolated by s, and a linear ramp over the pair index blends in between. The pair index
    for r turns is d * ln(original / (2 pi r)) / (2 ln theta), floored / ceiled as in the
    reference implementation. The attention temperature is sqrt(1/t) = 0.1 ln(s) + 1.
    """
    beta_fast, beta_slow = 32.0, 1.0

    def pair_index(turns: float) -> float:
        return d * math.log(original / (2 * math.pi * turns)) / (2 * math.log(theta))

    low = max(math.floor(pair_index(beta_fast)), 0)
    high = min(math.ceil(pair_index(beta_slow)), d - 1)
    interpolated = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    base = default_inv_freq(theta, d)
    inv_freq = base * (1 - interpolated) + base / s * interpolated
    return inv_freq, 0.1 * math.log(s) + 1.0


def llama3_reference(
    theta: float, d: int, s: float, original: int, low_ff: float = 1.0, high_ff: float = 4.0
) -> torch.Tensor:
    """Llama 3.1 wavelength bands: keep wavelengths < original / high_ff, divide those
    > original / low_ff by s, and blend linearly in original / wavelength in between."""
    inv_freq = default_inv_freq(theta, d)
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low_ff) / (high_ff - low_ff)
    blended = (1 - smooth) * inv_freq / s + smooth * inv_freq
    return torch.where(
        wavelength < original / high_ff,
        inv_freq,
        torch.where(wavelength > original / low_ff, inv_freq / s, blended),
    )


def dynamic_reference(theta: float, d: int, s: float, original: int, length: int) -> torch.Tensor:
    """Dynamic NTK (emozilla): for length L > original the base becomes
    theta * (s * L / original - (s - 1)) ** (d / (d - 2))."""
    return default_inv_freq(theta * (s * length / original - (s - 1)) ** (d / (d - 2)), d)


def assert_inv_freq(rotary: torch.nn.Module, expected: torch.Tensor) -> None:
    torch.testing.assert_close(rotary.inv_freq.double(), expected, rtol=RTOL, atol=0.0)


# The built model's frequencies match the formulas.


@pytest.mark.parametrize("arch", list(ARCHS))
def test_theta_raises_base_by_ntk_rule(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(arch, method="theta")
    new_theta = ntk_theta(THETA, SCALE, d)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": new_theta}
    assert config.max_position_embeddings == TARGET
    rotary = build_rotary(config)
    assert_inv_freq(rotary, default_inv_freq(new_theta, d))
    original = default_inv_freq(THETA, d)
    # Highest frequency (local order) kept exactly, lowest stretched by exactly s.
    assert rotary.inv_freq[0].item() == 1.0
    assert rotary.inv_freq[-1].item() == pytest.approx(original[-1].item() / SCALE, rel=RTOL)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_linear_divides_every_frequency(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(arch, method="linear")
    assert config.rope_parameters["rope_type"] == "linear"
    assert config.rope_parameters["factor"] == SCALE
    assert config.max_position_embeddings == TARGET
    assert_inv_freq(build_rotary(config), default_inv_freq(THETA, d) / SCALE)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_yarn_ramp_and_attention_scaling(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(arch, method="yarn")
    assert config.rope_parameters["rope_type"] == "yarn"
    assert config.rope_parameters["original_max_position_embeddings"] == ORIGINAL
    assert config.max_position_embeddings == TARGET
    rotary = build_rotary(config)
    expected, attention_scaling = yarn_reference(THETA, d, SCALE, ORIGINAL)
    assert_inv_freq(rotary, expected)
    assert rotary.attention_scaling == pytest.approx(attention_scaling, rel=1e-12)
    # The ramp really blends: some pairs kept, some fully interpolated, some in between.
    ratio = expected / default_inv_freq(THETA, d)
    assert ratio[0] == 1.0 and ratio[-1] == pytest.approx(1 / SCALE)
    assert ((ratio < 1.0) & (ratio > 1 / SCALE + 1e-9)).any()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_llama3_wavelength_bands(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(arch, method="llama3")
    parameters = config.rope_parameters
    assert parameters["rope_type"] == "llama3"
    assert parameters["factor"] == SCALE
    assert (parameters["low_freq_factor"], parameters["high_freq_factor"]) == (1.0, 4.0)
    assert parameters["original_max_position_embeddings"] == ORIGINAL
    assert config.max_position_embeddings == TARGET
    assert_inv_freq(build_rotary(config), llama3_reference(THETA, d, SCALE, ORIGINAL))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_dynamic_ntk_recomputes_base_at_longer_length(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(arch, method="dynamic")
    assert config.rope_parameters["rope_type"] == "dynamic"
    assert config.rope_parameters["factor"] == SCALE
    # transformers measures the length against max_position_embeddings for this type, so it
    # stays at the original context (documented deviation from "becomes the target").
    assert config.max_position_embeddings == ORIGINAL
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    rotary = model.model.rotary_emb
    assert_inv_freq(rotary, default_inv_freq(THETA, d))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, TARGET)))
    assert_inv_freq(rotary, dynamic_reference(THETA, d, SCALE, ORIGINAL, TARGET))
    with torch.no_grad():
        model(input_ids=torch.randint(0, 128, (1, ORIGINAL // 2)))
    assert_inv_freq(rotary, default_inv_freq(THETA, d))


@pytest.mark.parametrize(
    ("target", "case"),
    [(ORIGINAL // 2, "shorter"), (ORIGINAL, "equal"), (TARGET, "longer")],
    ids=["shorter", "equal", "longer"],
)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_none_leaves_frequencies_unchanged(arch: str, target: int, case: str) -> None:
    config = tiny_config(arch)
    before = dict(config.rope_parameters)
    change = plan_rope_change(config, target_context=target, method="none")
    apply_rope_change(config, change)
    assert config.rope_parameters == before
    assert config.max_position_embeddings == target
    torch.testing.assert_close(
        build_rotary(config).inv_freq, build_rotary(tiny_config(arch)).inv_freq, rtol=0, atol=0
    )
    assert ("extrapolated" in change.describe()) == (case == "longer")


# Composing with a source config that already scales RoPE.

LLAMA3_SOURCE = {
    "rope_type": "llama3",
    "rope_theta": THETA,
    "factor": 4.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
YARN_SOURCE = {
    "rope_type": "yarn",
    "rope_theta": THETA,
    "factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_llama3_source_with_llama3_multiplies_factor(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(
        arch, method="llama3", target=2 * ORIGINAL, rope_parameters=dict(LLAMA3_SOURCE)
    )
    assert config.rope_parameters == {**LLAMA3_SOURCE, "factor": 8.0}
    assert config.max_position_embeddings == 2 * ORIGINAL
    assert_inv_freq(build_rotary(config), llama3_reference(THETA, d, 8.0, 64))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_llama3_source_with_theta_raises_its_base(arch: str) -> None:
    d = ARCHS[arch][2]
    config = changed_config(
        arch, method="theta", target=2 * ORIGINAL, rope_parameters=dict(LLAMA3_SOURCE)
    )
    new_theta = ntk_theta(THETA, 2.0, d)
    assert config.rope_parameters == {**LLAMA3_SOURCE, "rope_theta": new_theta}
    assert_inv_freq(build_rotary(config), llama3_reference(new_theta, d, 4.0, 64))


def test_llama3_source_with_none_keeps_it() -> None:
    source = {**LLAMA3_SOURCE, "factor": 32.0, "original_max_position_embeddings": 8192}
    config = tiny_config("llama", max_position_embeddings=131072, rope_parameters=dict(source))
    apply_rope_change(config, plan_rope_change(config, target_context=65536, method="none"))
    assert config.rope_parameters == source
    assert config.max_position_embeddings == 65536
    assert_inv_freq(build_rotary(config), llama3_reference(THETA, 16, 32.0, 8192))


def test_yarn_source_with_yarn_multiplies_factor() -> None:
    config = changed_config(
        "llama", method="yarn", target=2 * ORIGINAL, rope_parameters=dict(YARN_SOURCE)
    )
    assert config.rope_parameters == {**YARN_SOURCE, "factor": 8.0}
    rotary = build_rotary(config)
    expected, attention_scaling = yarn_reference(THETA, 16, 8.0, 64)
    assert_inv_freq(rotary, expected)
    assert rotary.attention_scaling == pytest.approx(attention_scaling, rel=1e-12)


# Errors: one line, naming the problem and the fix.


def raised(call: Any) -> str:
    with pytest.raises(LhConvertError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_method_lists_the_valid_ones() -> None:
    config = tiny_config("llama")
    message = raised(lambda: plan_rope_change(config, target_context=TARGET, method="ntk"))
    assert "'ntk'" in message and ", ".join(ROPE_METHODS) in message


@pytest.mark.parametrize("method", [m for m in ROPE_METHODS if m != "none"])
def test_smaller_target_suggests_larger_ctx_or_none(method: str) -> None:
    config = tiny_config("llama", max_position_embeddings=8192)
    message = raised(lambda: plan_rope_change(config, target_context=4096, method=method))
    assert message == (
        "--ctx 4096 is smaller than the model's context 8192; pass --ctx > 8192, or --rope none"
        " to train at a length the model already supports"
    )


@pytest.mark.parametrize("method", [m for m in ROPE_METHODS if m != "none"])
def test_equal_target_suggests_none(method: str) -> None:
    config = tiny_config("llama")
    message = raised(lambda: plan_rope_change(config, target_context=ORIGINAL, method=method))
    assert "equals the model's context" in message and "--rope none" in message


@pytest.mark.parametrize("target", [0, -5, 2048.0, True], ids=["zero", "negative", "float", "bool"])
def test_target_must_be_positive_int(target: Any) -> None:
    message = raised(lambda: plan_rope_change(tiny_config("llama"), target_context=target))
    assert "--ctx must be a positive integer" in message


@pytest.mark.parametrize("method", ["linear", "dynamic", "yarn"])
def test_llama3_source_refuses_other_scaling(method: str) -> None:
    config = tiny_config("llama", rope_parameters=dict(LLAMA3_SOURCE))
    message = raised(lambda: plan_rope_change(config, target_context=TARGET, method=method))
    assert "already uses llama3 RoPE scaling" in message
    for fix in ("--rope theta", "--rope llama3", "--rope none"):
        assert fix in message


def test_apply_twice_is_refused() -> None:
    config = tiny_config("llama")
    change = plan_rope_change(config, target_context=TARGET)
    apply_rope_change(config, change)
    assert "already applied" in raised(lambda: apply_rope_change(config, change))


# The record and the config round trip.


@pytest.fixture
def rope_warnings() -> Iterator[list[str]]:
    """Warnings transformers' RoPE validation logs while the test runs."""
    records: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    rope_logger = logging.getLogger("transformers.modeling_rope_utils")
    rope_logger.addHandler(handler)
    yield records
    rope_logger.removeHandler(handler)


@pytest.mark.parametrize("method", ROPE_METHODS)
def test_plan_reads_config_only(method: str) -> None:
    config = tiny_config("llama")
    plan_rope_change(config, target_context=TARGET, method=method)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": THETA}
    assert config.max_position_embeddings == ORIGINAL


@pytest.mark.parametrize("method", ROPE_METHODS)
def test_record_is_json_and_config_round_trips(
    method: str, tmp_path: Any, rope_warnings: list[str]
) -> None:
    config = tiny_config("llama")
    change = plan_rope_change(config, target_context=TARGET, method=method)
    apply_rope_change(config, change)
    assert rope_warnings == []  # transformers accepts the new parameters as they are

    record = json.loads(json.dumps(change.to_dict()))
    assert record["method"] == method and record["scale"] == SCALE
    assert record["after"] == config.rope_parameters
    assert record["before"] == {"rope_type": "default", "rope_theta": THETA}
    description = change.describe()
    assert description == record["description"] and "\n" not in description
    assert f"context {ORIGINAL} -> {TARGET}" in description

    config.save_pretrained(tmp_path)  # runs transformers' strict validation
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert reloaded.rope_parameters == config.rope_parameters
    assert reloaded.max_position_embeddings == change.max_position_embeddings
    torch.testing.assert_close(build_rotary(reloaded).inv_freq, build_rotary(config).inv_freq)


def test_default_method_and_description() -> None:
    change = plan_rope_change(tiny_config("llama"), target_context=TARGET)
    assert DEFAULT_ROPE_METHOD == "theta" and change.method == "theta"
    assert isinstance(change, RopeChange)
    assert change.describe().startswith("theta 10000 -> ")
    assert "NTK-aware base for 8x" in change.describe()
