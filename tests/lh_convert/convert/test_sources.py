"""Model specs to sources, and strict loading of configs, tokenizers and weights.

The hub tests never touch the network: they point the hub client at a local socket that
never answers, at a closed port, or switch on offline mode, with an empty cache.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from lh_convert.util.formats import verify_safetensors_dir
from lh_convert.util.errors import LhConvertError
from lh_convert.convert.sources import (
    SUPPORTED_MODEL_TYPES,
    ModelSource,
    load_aliases,
    load_config,
    load_model,
    load_tokenizer,
    resolve_source,
)

TINY_ARCHS = ["llama", "mistral", "qwen2", "qwen3"]
HUB_ERROR = (
    r"cannot reach the Hugging Face hub for 'meta-llama/Llama-3\.2-1B' \({reason}\); download the "
    r"model elsewhere and pass its local folder, e\.g\. --model \./Llama-3\.2-1B"
)


def _load(folder: Path, *, dtype: torch.dtype | None = None):
    source = resolve_source(str(folder))
    return load_model(source, config=load_config(source), dtype=dtype)


# ---- aliases and specs ---------------------------------------------------------------------------


def test_aliases_name_the_documented_models() -> None:
    aliases = load_aliases()
    expected = {
        "llama-1b": "meta-llama/Llama-3.2-1B",
        "llama-3b": "meta-llama/Llama-3.2-3B",
        "llama-8b": "meta-llama/Llama-3.1-8B",
        "smollm2-135m": "HuggingFaceTB/SmolLM2-135M",
        "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
        "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B",
        "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
        "qwen3-0.6b": "Qwen/Qwen3-0.6B",
        "mistral-7b": "mistralai/Mistral-7B-v0.3",
    }
    assert {name: aliases[name]["hub_id"] for name in expected} == expected
    assert all(entry["description"] for entry in aliases.values())


def test_local_folder(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    source = resolve_source(str(folder))
    assert source == ModelSource(spec=str(folder), kind="local", path=folder.resolve())
    assert json.loads(json.dumps(source.to_dict()))["path"] == str(folder.resolve())


def test_folder_without_config_points_at_its_gguf(tmp_path: Path) -> None:
    (tmp_path / "model.Q4_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(
        LhConvertError,
        match=r"has no config.json; pass the .gguf file itself, e.g. --model .*model.Q4_0.gguf",
    ):
        resolve_source(str(tmp_path))


def test_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    source = resolve_source(str(tmp_path / "m.gguf"))
    assert (source.kind, source.path, source.gguf_file, source.hub_id) == (
        "gguf",
        tmp_path.resolve(),
        "m.gguf",
        None,
    )


def test_other_file_is_refused(make_tiny_checkpoint) -> None:
    weights = make_tiny_checkpoint("llama") / "model.safetensors"
    with pytest.raises(LhConvertError, match="is a file; pass the folder that holds config.json"):
        resolve_source(str(weights))


@pytest.mark.parametrize(
    "spec",
    [
        "./no-such-model",
        "~/no-such-model",
        "/no/such/model",
        "a/b/c",
        "missing.gguf",
        "org/model.safetensors",
    ],
)
def test_missing_path(spec: str) -> None:
    with pytest.raises(
        LhConvertError, match=rf"model path {spec} does not exist; pass an existing model folder"
    ):
        resolve_source(spec)


@pytest.mark.parametrize("spec", ["foo", "llama", ""])
def test_unknown_spec_lists_the_aliases(spec: str) -> None:
    with pytest.raises(
        LhConvertError, match="smollm2-135m" if spec else "the model argument is empty"
    ):
        resolve_source(spec)


# ---- hub, offline --------------------------------------------------------------------------------


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The hub client pointed at a local port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        monkeypatch.setattr(
            huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}"
        )
        yield


def _assert_fails_fast(spec: str, *, reason: str, limit_s: float, **kwargs: float) -> float:
    start = time.perf_counter()
    with pytest.raises(LhConvertError, match=HUB_ERROR.format(reason=reason)):
        resolve_source(spec, **kwargs)
    elapsed = time.perf_counter() - start
    print(f"hub failure for {spec!r} took {elapsed:.2f} s")
    assert elapsed < limit_s
    return elapsed


def test_hub_offline_mode(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _assert_fails_fast("llama-1b", reason="HF_HUB_OFFLINE is set", limit_s=1.0)


def test_hub_that_never_answers_is_bounded(empty_hub_cache: Path, silent_hub: None) -> None:
    _assert_fails_fast(
        "llama-1b", reason="no answer within 1 s|ReadTimeout.*", limit_s=3.0, hub_timeout_s=1.0
    )


def test_hub_connection_refused(empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    _assert_fails_fast("meta-llama/Llama-3.2-1B", reason="ConnectError: .*", limit_s=3.0)


def test_offline_uses_an_earlier_download(
    make_tiny_checkpoint, empty_hub_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hub_cache / "models--HuggingFaceTB--SmolLM2-135M"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(make_tiny_checkpoint("llama"), repo / "snapshots" / commit)
    source = resolve_source("smollm2-135m")
    assert (source.kind, source.hub_id, source.alias) == (
        "hub",
        "HuggingFaceTB/SmolLM2-135M",
        "smollm2-135m",
    )
    assert source.path == repo / "snapshots" / commit
    assert load_config(source).model_type == "llama"


# ---- config and tokenizer ------------------------------------------------------------------------


def test_unsupported_architecture(make_tiny_checkpoint) -> None:
    source = resolve_source(str(make_tiny_checkpoint("gemma")))
    with pytest.raises(
        LhConvertError,
        match=r"model_type='gemma'.*use a model of type llama, mistral, qwen2, qwen3",
    ):
        load_config(source)


def test_unknown_model_type_is_refused_before_transformers_sees_it(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my_custom_llama"}))
    with pytest.raises(LhConvertError, match="model_type='my_custom_llama'"):
        load_config(resolve_source(str(folder)))


def test_tokenizer(make_tiny_checkpoint) -> None:
    tokenizer = load_tokenizer(resolve_source(str(make_tiny_checkpoint("qwen3"))))
    ids = tokenizer("Simple is better than complex.").input_ids
    assert ids[0] == tokenizer.bos_token_id and len(tokenizer) == 512
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Simple is better than complex."


def test_missing_tokenizer(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(LhConvertError, match="no tokenizer in .*copy the tokenizer files"):
        load_tokenizer(resolve_source(str(folder)))


# ---- model loading -------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", TINY_ARCHS)
def test_load_model_round_trip(make_tiny_checkpoint, model_type: str) -> None:
    folder = make_tiny_checkpoint(model_type, seed=3)
    torch.manual_seed(3)  # the factory's seed: rebuilds the very model it saved
    saved = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    loaded = _load(folder).eval()
    assert model_type in SUPPORTED_MODEL_TYPES and loaded.config.model_type == model_type
    assert loaded.config._attn_implementation == "sdpa" and loaded.dtype == torch.float32
    tokens = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (loaded(tokens).logits - saved(tokens).logits).abs().max().item()
    assert difference == 0.0


def test_tied_embeddings_load_without_lm_head(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama", tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    model = _load(folder)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_dtype_defaults_to_the_checkpoint_and_can_be_chosen(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("qwen2", dtype=torch.bfloat16)
    assert _load(folder).dtype == torch.bfloat16
    assert _load(folder, dtype=torch.float32).dtype == torch.float32


def test_missing_and_unexpected_tensors_are_errors(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("mistral", num_hidden_layers=2)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.norm.weight"]
    tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(3)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        LhConvertError,
        match=r"does not match its config: 1 missing tensors \(model.norm.weight\); "
        r"1 unexpected tensors \(model.layers.0.self_attn.extra.weight\)",
    ):
        _load(folder)


def test_shape_mismatch_is_an_error(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(
        LhConvertError,
        match=r"6 shape-mismatched tensors \(model.layers.0.mlp.down_proj.weight \[64, 128\] "
        r"in the checkpoint vs \[64, 96\]",
    ):
        _load(folder)


def test_truncated_weights_are_an_error(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        LhConvertError,
        match=rf"checkpoint file {weights} is truncated or corrupt \(.*\); re-download it",
    ):
        _load(folder)


def test_pickled_weights_are_not_loaded(make_tiny_checkpoint) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(LhConvertError, match="pickled"):
        _load(folder)


# ---- tiny GGUF -----------------------------------------------------------------------------------


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(tokens).logits


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),
        ("mistral", {}),
        ("qwen2", {}),
        ("qwen3", {"head_dim": 128}),
    ],
    ids=["llama", "llama-tied", "mistral", "qwen2", "qwen3"],
)
def test_gguf_matches_the_safetensors_it_was_written_from(
    make_tiny_checkpoint, make_tiny_gguf, tmp_path: Path, model_type: str, overrides: dict
) -> None:
    folder = make_tiny_checkpoint(model_type, num_hidden_layers=2, **overrides)
    source = resolve_source(str(make_tiny_gguf(folder)))
    config = load_config(source)
    model = load_model(source, config=config)
    assert config.model_type == ("llama" if model_type == "mistral" else model_type)
    assert model.dtype == torch.float32 and getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    tied = overrides.get("tie_word_embeddings", False)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    tokens = torch.randint(0, 512, (2, 13), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(model, tokens), _logits(_load(folder), tokens))
    text = "Explicit is better than implicit."
    from_gguf = load_tokenizer(source)(text).input_ids
    assert from_gguf == load_tokenizer(resolve_source(str(folder)))(text).input_ids
    model.save_pretrained(tmp_path / "dense")  # transformers refuses this for its own GGUF load
    verify_safetensors_dir(tmp_path / "dense")


def test_gguf_in_bfloat16(make_tiny_checkpoint, make_tiny_gguf) -> None:
    source = resolve_source(str(make_tiny_gguf(make_tiny_checkpoint("llama", num_hidden_layers=2))))
    model = load_model(source, config=load_config(source), dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_gguf_tensor_that_transformers_would_drop_is_an_error(
    make_tiny_checkpoint, make_tiny_gguf
) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    gguf_file = make_tiny_gguf(folder, extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    source = resolve_source(str(gguf_file))
    with pytest.raises(
        LhConvertError, match=r"holds 1 tensors transformers does not load \(rope_freqs.weight\)"
    ):
        load_model(source, config=load_config(source))


def test_gguf_unsupported_architecture(make_tiny_checkpoint, make_tiny_gguf) -> None:
    folder = make_tiny_checkpoint("llama", num_hidden_layers=2)
    source = resolve_source(str(make_tiny_gguf(folder, architecture="gemma2")))
    with pytest.raises(
        LhConvertError, match=r"has architecture 'gemma2', which lh-convert does not"
    ):
        load_config(source)


def test_gguf_named_exactly_mistral(make_tiny_checkpoint, make_tiny_gguf) -> None:
    folder = make_tiny_checkpoint("mistral", num_hidden_layers=2)
    source = resolve_source(str(make_tiny_gguf(folder, name="mistral")))
    config = load_config(source)
    assert config.model_type == "mistral"
    with pytest.raises(LhConvertError, match="transformers cannot load the tensors of GGUF file"):
        load_model(source, config=config)


def test_gguf_qwen3_head_dim_other_than_128_is_caught(make_tiny_checkpoint, make_tiny_gguf) -> None:
    source = resolve_source(str(make_tiny_gguf(make_tiny_checkpoint("qwen3", num_hidden_layers=2))))
    config = load_config(source)
    assert config.head_dim == 128  # the file says 16; transformers does not read it
    with pytest.raises(LhConvertError, match="shape-mismatched tensors"):
        load_model(source, config=config)


def test_truncated_gguf(make_tiny_checkpoint, make_tiny_gguf) -> None:
    gguf_file = make_tiny_gguf(make_tiny_checkpoint("llama", num_hidden_layers=2))
    gguf_file.write_bytes(gguf_file.read_bytes()[: gguf_file.stat().st_size // 2])
    with pytest.raises(
        LhConvertError, match=rf"checkpoint file {gguf_file} is truncated or corrupt"
    ):
        load_config(resolve_source(str(gguf_file)))


# ---- the real GGUF model -------------------------------------------------------------------------

PARAGRAPH = (
    "The city library opens at nine in the morning and closes at six in the evening. On weekends, "
    "many families visit to borrow books, read newspapers, and attend free reading sessions for "
    "children. The librarians are friendly and always ready to help visitors find what they need. "
    "Last year, the library added a small cafe near the entrance, where people can enjoy a cup of "
    "coffee while they read."
)


@pytest.mark.slow
def test_gguf_config(smollm2: dict, smollm2_gguf: Path) -> None:
    source, config = smollm2["source"], smollm2["config"]
    assert source.kind == "gguf" and source.gguf_file == smollm2_gguf.name
    assert source.path == smollm2_gguf.parent.resolve()
    assert config.model_type == "llama"
    heads = (config.num_attention_heads, config.num_key_value_heads)
    assert config.num_hidden_layers == 30 and heads == (9, 3)
    assert config.max_position_embeddings == 8192 and config.tie_word_embeddings
    assert getattr(config, "quantization_config", None) is None


@pytest.mark.slow
def test_gguf_model_is_a_plain_dense_float32_model(smollm2: dict, tmp_path: Path) -> None:
    model = smollm2["model"]
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path / "dense")  # transformers refuses this for its own GGUF load
    verify_safetensors_dir(tmp_path / "dense")


@pytest.mark.slow
def test_gguf_model_predicts_english(smollm2: dict) -> None:
    model, tokenizer = smollm2["model"], smollm2["tokenizer"]
    ids = tokenizer(PARAGRAPH, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    print(f"SmolLM2-135M-Instruct Q4_1: loss {loss:.3f} nats/token over {ids.shape[1]} tokens")
    assert math.isfinite(loss) and loss < 4.0


def test_gguf_summary_reads_the_special_token_ids(smollm2_gguf: Path) -> None:
    from lh_convert.util.formats import read_gguf_summary

    assert dict(read_gguf_summary(smollm2_gguf).special_tokens) == {
        "bos": 1, "eos": 2, "unk": 0, "pad": 2}


def test_the_gguf_file_decides_the_special_tokens(tiny_tokenizer) -> None:
    """transformers 5.17 reads SmolLM2's EOS from its GGUF as `<|im_start|>` (id 1) although
    the file says id 2; whatever a version reads, the file's ids win."""
    from lh_convert.util.formats import GgufSummary
    from lh_convert.convert.sources import _use_gguf_special_tokens

    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)  # the fixture is shared by the session
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(bos)  # what a wrong reading gives
    summary = GgufSummary(architecture="llama", tensor_names=(),
                          special_tokens=(("bos", bos), ("eos", eos), ("pad", eos)))
    _use_gguf_special_tokens(tokenizer, summary)
    got = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert got == (bos, eos, eos)
    assert tiny_tokenizer.eos_token_id == eos
