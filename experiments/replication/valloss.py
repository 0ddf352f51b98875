"""Validation loss by length on a token folder's held-out windows, for `replicate.py eval`."""

from __future__ import annotations

from pathlib import Path


def validation_loss(model, *, tokenizer, corpus: Path, device: str, lengths: list[int],
                    windows: int) -> dict:
    """Loss on the first L positions (and on the last quarter of those, as training's
    val_late_loss) of `windows` consecutive validation windows of max(lengths) tokens.

    One forward per window serves every L: attention is causal, so the first L positions of a
    long window see exactly what an L-token window starting there would.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from lh_convert.train.data import DataSpec, tokenize_corpus

    tokens = tokenize_corpus(spec=DataSpec(paths=(str(corpus),)), tokenizer=tokenizer,
                             cache_dir=corpus, progress=False).validation
    longest = max(lengths)
    count = min(windows, len(tokens) // longest)
    per_window: dict[int, list[tuple[float, float]]] = {n: [] for n in lengths}
    head = model.get_output_embeddings()
    for window in range(count):
        ids = torch.from_numpy(np.asarray(tokens[window * longest:(window + 1) * longest],
                                          np.int64)).to(device)[None]
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16,
                                             enabled=device == "cuda"):
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
            nll = torch.cat([F.cross_entropy(F.linear(hidden[a:a + 4096], head.weight).float(),
                                             ids[0, 1 + a:1 + a + 4096], reduction="none")
                             for a in range(0, hidden.shape[0], 4096)])
        for n in lengths:
            first = int((n - 1) * 0.75)
            per_window[n].append((nll[:n - 1].mean().item(), nll[first:n - 1].mean().item()))
    table = {}
    for n, values in per_window.items():
        whole, late = np.array(values).T
        table[str(n)] = {"loss": whole.mean(), "late_loss": late.mean(),
                         "loss_sem": whole.std(ddof=1) / np.sqrt(len(whole)) if count > 1 else 0,
                         "per_window": whole.tolist(), "late_per_window": late.tolist()}
    return {"windows": count, "window_tokens": longest, "lengths": table}
