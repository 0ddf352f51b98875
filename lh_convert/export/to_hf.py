"""Export a run as a plain checkpoint of the original architecture (``lh-convert export``).

Lighthouse adds no parameters, so export is a config change: the ``lighthouse`` settings are
removed, the new RoPE and context stay, and nothing names custom code (no ``auto_map``, no
``trust_remote_code``, no attention implementation). The result is verified in a fresh Python
process in which ``lh_convert`` cannot be imported: plain transformers loads it and its logits
on a fixed input must match the run's own dense forward.

Every export holds a model card (``README.md``, see ``model_card``). With a ``PushRequest`` the
finished, verified folder is then uploaded to the hub (``publish``); a real upload needs a
token, which is checked before any work so a missing login costs nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file

from .. import __version__
from ..convert.run_model import load_run_model
from ..convert.settings import CONFIG_KEY
from ..convert.surgery import MAX_SHARD_SIZE
from ..train.checkpoint import latest_checkpoint
from ..util import hf_load
from ..util.atomic import atomic_directory, bytes_of, check_output_folder
from ..util.checksums import write_checksums
from ..util.errors import LhConvertError
from .model_card import CARD_NAME, build_model_card
from .publish import PushRequest, PushResult, plan_push, push_folder, resolve_token

VERIFY_TEXT = ("The lighthouse keeper climbed the stairs at dusk, lit the lamp, and watched "
               "the ships find their way between the rocks until morning.")
# float32 logits of the same weights through the same SDPA math: anything above this is a bug.
VERIFY_TOLERANCE = 1e-3
FORBIDDEN_CONFIG_KEYS = (CONFIG_KEY, "auto_map", "_attn_implementation", "attn_implementation")

_VERIFY_SCRIPT = """
import json, sys
sys.modules["lh_convert"] = None          # prove the export needs nothing of ours
sys.modules["lighthouse_kernels"] = None
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
folder, reference = sys.argv[1], sys.argv[2]
expected = load_file(reference)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                             trust_remote_code=False).eval()
with torch.no_grad():
    logits = model(input_ids=expected["input_ids"], use_cache=False).logits
print(json.dumps({"max_abs_diff": (logits - expected["logits"]).abs().max().item(),
                  "model_class": type(model).__name__}))
"""


@dataclass(frozen=True)
class ExportResult:
    """The exported folder, its top-level file names, the verification, the model card text,
    and the upload (``None`` without a ``PushRequest``)."""

    out: Path
    files: list[str]
    max_abs_diff: float
    model_class: str
    model_card: str
    push: PushResult | None = None


def verify_in_fresh_process(folder: Path, *, input_ids: torch.Tensor,
                            expected_logits: torch.Tensor) -> dict:
    """Load ``folder`` with plain transformers in a new interpreter; return its report."""
    with tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "reference.safetensors"
        save_file({"input_ids": input_ids.contiguous(), "logits": expected_logits.contiguous()},
                  str(reference))
        done = subprocess.run([sys.executable, "-I", "-c", _VERIFY_SCRIPT, str(folder), str(reference)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LhConvertError(f"the exported checkpoint does not load in plain transformers: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export(*, run: Path, out: Path, verify: bool = True, push: PushRequest | None = None,
           api: HfApi | None = None) -> ExportResult:
    """Write the run's weights as a plain Hugging Face checkpoint to ``out`` and verify it.

    Args:
        run: the run folder.
        out: the folder to create (it must not exist).
        verify: reload ``out`` in a fresh process with plain transformers and compare logits.
        push: upload the finished folder to the hub (or, with ``dry_run``, only list it).
        api: the hub client for the upload (tests); default ``HfApi`` with the user's token.
    """
    token = None
    if push is not None and not push.dry_run:
        if not verify:
            raise LhConvertError("--push-to-hub uploads only a verified export; drop --no-verify "
                                 "(or add --dry-run to only list the files)")
        token = resolve_token()  # before any work: a missing login must cost nothing
    check_output_folder(Path(out))
    model, manifest, _ = load_run_model(run, lighthouse=False, dtype=None,
                                        checkpoint=latest_checkpoint(run))
    model.eval()
    tokenizer = hf_load.load_tokenizer(run)
    input_ids = tokenizer(VERIFY_TEXT, return_tensors="pt").input_ids[:, :64]
    with torch.no_grad():  # the run's own dense forward (every layer dense, probed)
        expected = model.float()(input_ids=input_ids, use_cache=False).logits
    config = model.config
    for key in FORBIDDEN_CONFIG_KEYS:
        if key in config.__dict__ and key != "_attn_implementation":
            delattr(config, key)
    model.to(getattr(torch, manifest.dtype))
    card = build_model_card(run_dir=Path(run), manifest=manifest,
                            repo_id=push.repo_id if push is not None else None)
    with atomic_directory(Path(out), needed=bytes_of(model.parameters())) as staging:
        model.save_pretrained(staging, max_shard_size=MAX_SHARD_SIZE)
        tokenizer.save_pretrained(staging)
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        write_checksums(staging)
        saved = json.loads((staging / "config.json").read_text())
        leftover = [key for key in FORBIDDEN_CONFIG_KEYS if key in saved]
        if leftover:
            raise LhConvertError(f"export left {leftover} in config.json; this is a bug, report it")
        report = {"max_abs_diff": 0.0, "model_class": type(model).__name__}
        if verify:
            report = verify_in_fresh_process(staging, input_ids=input_ids, expected_logits=expected)
            if not report["max_abs_diff"] <= VERIFY_TOLERANCE:
                raise LhConvertError(
                    f"the exported checkpoint's logits differ from the run's by "
                    f"{report['max_abs_diff']:.3g} (> {VERIFY_TOLERANCE}); nothing was written")
        files = sorted(p.name for p in staging.iterdir())
    pushed = None
    if push is not None and push.dry_run:
        pushed = plan_push(folder=Path(out), request=push)
    elif push is not None:
        pushed = push_folder(folder=Path(out), request=push, token=token, api=api,
                             commit_message=f"Upload {manifest.model_type} at "
                                            f"{manifest.target_context} tokens, exported by "
                                            f"lh-convert {__version__}")
    return ExportResult(out=Path(out), files=files, max_abs_diff=report["max_abs_diff"],
                        model_class=report["model_class"], model_card=card, push=pushed)
