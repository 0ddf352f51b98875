"""How far from home is a dense-trained model under each Lighthouse setting? No training.

Issue #18's levers "which layers run Lighthouse" and "combination rule" (and a larger top-k),
measured as the loss of the converted model on held-out windows at its target context, before
any training: the starting point stage 1 meets. Unlike operator_probe.py (CPU, the float32
reference at 8K) this runs the model's own kernels (Triton on a GPU, bf16) at the run's context,
changing the settings in place (`set_lighthouse_settings`) between forwards.

    lh-convert convert --model smollm2-135m-gguf --out /tmp/probe64k --ctx 64k --rope theta
    python experiments/replication/settings_probe.py --run /tmp/probe64k --data .rep/corpus \\
        --windows 2 --out settings_probe_64k.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from lh_convert.convert.attention import set_lighthouse_settings
from lh_convert.convert.run_model import load_run_model
from lh_convert.convert.settings import settings_of
from lh_convert.util.hf_load import load_tokenizer

from valloss import validation_loss  # experiments/replication/valloss.py


def layer_sets(n: int) -> dict[str, list[int]]:
    """Named choices of the layers that stay dense in a model of ``n`` layers."""
    edges = [0, 1, n - 2, n - 1]
    middle = range(2, n - 2)
    half = 2 + (n - 4) // 2
    return {
        f"lh{n - 4}-all-but-edges": edges,
        f"lh{len(middle[1::2])}-alternate": sorted(edges + list(middle[0::2])),
        f"lh{n - 2 - half}-deep-half": sorted(set(edges + list(range(2, half)))),
        f"lh{half - 2}-shallow-half": sorted(set(edges + list(range(half, n - 2)))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a converted run folder")
    parser.add_argument("--data", type=Path, required=True, help="a token folder (validation.bin)")
    parser.add_argument("--windows", type=int, default=2, help="held-out windows of the context")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, manifest, _ = load_run_model(args.run, lighthouse=True, dtype=dtype, device=device)
    model.eval()
    base = settings_of(model.config)
    n, layers = manifest.target_context, model.config.num_hidden_layers
    tokenizer = load_tokenizer(args.run)
    variants = {"dense": dataclasses.replace(base, dense_layers=tuple(range(layers)))}
    for combine in ("sum", "mean", "finest"):
        for name, dense in layer_sets(layers).items():
            variants[f"{combine} {name}"] = dataclasses.replace(
                base, combine=combine, dense_layers=tuple(dense))
        variants[f"{combine} topk{2 * base.topk}"] = dataclasses.replace(
            base, combine=combine, topk=2 * base.topk)
    results = {}
    for name, settings in variants.items():
        set_lighthouse_settings(model, settings)
        started = time.perf_counter()
        losses = validation_loss(model, tokenizer=tokenizer, corpus=args.data, device=device,
                                 lengths=[n], windows=args.windows)["lengths"][str(n)]["per_window"]
        results[name] = {"losses": losses, "dense_layers": list(settings.dense_layers),
                         "combine": settings.combine, "topk": settings.topk}
        print(f"{name:32s} loss {np.mean(losses):.3f} ({', '.join(f'{x:.3f}' for x in losses)}; "
              f"{time.perf_counter() - started:.1f}s)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "context": n, "device": device,
                                        "dtype": str(dtype), "variants": results}, indent=1))


if __name__ == "__main__":
    main()
