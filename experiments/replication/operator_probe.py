"""How foreign is Lighthouse to a model pre-trained dense? Loss of one converted run, no training.

The replication (docs/results.md) found SmolLM2-135M's first-batch loss at 64K 7.47 with
Lighthouse in 26 of 30 layers against 2.75 dense. This probe measures that gap without a GPU,
on held-out windows of a token folder, for the run's Lighthouse settings and for one variant
outside the specification, to tell the team where the gap comes from:

  dense       dense SDPA in every layer (the model as pre-trained)
  lighthouse  SPEC §1.6 (combine "sum"): every position adds the outputs of up to L entries
  mean        SPEC §7's "mean": the same selection and attention, each position's sum divided
              by its number of contributing entries
  finest      SPEC §7's "finest": each position takes its finest contributing entry only

On the CPU (without TRITON_INTERPRET) every piece runs its PyTorch reference, the golden-checked
one, in float32:

    lh-convert convert --model smollm2-135m-gguf --out /tmp/probe-run --ctx 8k --rope none \\
        --levels 3 --pooling 4 --topk 256 --tile 64
    python experiments/replication/operator_probe.py --run /tmp/probe-run --data .rep/corpus --windows 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import lh_convert.convert.attention as attention
from lh_convert.convert.run_model import load_run_model
from lighthouse_kernels.lighthouse import dense_causal_attention, lighthouse_attention_ref


def dense(query, key, value, *, config, scale=None):
    return dense_causal_attention(query, key, value, scale=scale)


def with_rule(combine: str):
    """The operator's reference with the run's settings but scatter-back rule ``combine``."""
    def operator(query, key, value, *, config, scale=None):
        return lighthouse_attention_ref(query, key, value, scale=scale,
                                        config=dataclasses.replace(config, combine=combine))
    return operator


VARIANTS = {"dense": dense, "lighthouse": with_rule("sum"), "mean": with_rule("mean"),
            "finest": with_rule("finest")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a converted run folder")
    parser.add_argument("--data", type=Path, required=True, help="a token folder (validation.bin)")
    parser.add_argument("--windows", type=int, default=2, help="held-out windows of the context")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    names = [name for name in args.variants.split(",") if name]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.manual_seed(0)
    model, manifest, _ = load_run_model(args.run, lighthouse=True, dtype=torch.float32)
    model.eval()
    n = manifest.target_context
    tokens = np.fromfile(args.data / "validation.bin", dtype=np.uint16)
    windows = [torch.from_numpy(tokens[i * n:(i + 1) * n].astype(np.int64))[None]
               for i in range(args.windows)]
    results: dict[str, list[float]] = {}
    for name in names:
        function = VARIANTS[name]
        started = time.perf_counter()
        losses = []
        for ids in windows:
            with torch.no_grad(), _operator(function):
                losses.append(model(input_ids=ids, labels=ids, use_cache=False).loss.item())
        results[name] = losses
        print(f"{name:10s} loss {np.mean(losses):.3f} per window "
              f"{', '.join(f'{x:.3f}' for x in losses)} ({time.perf_counter() - started:.0f}s)",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "context": n, "losses": results},
                                       indent=1))


class _operator:
    """Swap the operator lh_convert's attention function calls, for the duration of a block."""

    def __init__(self, function) -> None:
        self.function = function

    def __enter__(self) -> None:
        self.saved = attention.lighthouse_attention
        attention.lighthouse_attention = self.function

    def __exit__(self, *exc) -> None:
        attention.lighthouse_attention = self.saved


if __name__ == "__main__":
    main()
