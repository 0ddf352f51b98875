"""Judge ``run.sh``'s results against issue #8's targets; write ``summary.md`` and ``summary.json``.

Reads the work folder ``run.sh`` fills (a missing part is reported as not run):

- ``scaling-1/``, ``scaling-N/``: ``bench_train.json`` of FSDP2 data parallel on 1 and N GPUs;
- ``cp-1/``, ``cp-N/``: ``bench_train.json`` at 256K on 1 GPU and with ``--cp N``;
- ``loss-1/``, ``loss-N/``: ``metrics.jsonl`` of ``extend`` + ``recover`` at cp=1 and cp=N.

Targets: per-GPU scaling >= 0.9; the CP run's Lighthouse/dense gain at least 0.85x the
one-GPU gain (within 15%; a larger gain is reported, not failed); losses equal within
``FIRST_STEP_ABS`` at the first step (same weights, same batch: only the attention's rounding
differs) and ``LOSS_REL`` relative at every logged step (bf16 steps amplify that rounding).

Usage: python experiments/multigpu/summarize.py WORK_DIR N OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCALING_TARGET = 0.9
GAIN_TOLERANCE = 0.15
FIRST_STEP_ABS = 0.01
LOSS_REL = 0.02


def _bench(path: Path) -> dict[str, dict] | None:
    """``bench_train.json``'s rows by mode (one length per run), or None when it is missing."""
    if not path.is_file():
        return None
    return {row["mode"]: row for row in json.loads(path.read_text())["rows"]}


def scaling(work: Path, n: int) -> dict:
    one, many = (_bench(work / f"scaling-{k}" / "bench_train.json") for k in (1, n))
    if one is None or many is None:
        return {"status": "not run"}
    rows = {}
    for mode in sorted(set(one) & set(many)):
        rows[mode] = {"n": one[mode]["n"], "one_gpu_tok_s": one[mode]["tokens_per_s"],
                      "per_gpu_tok_s": many[mode]["tokens_per_s"],
                      "scaling": many[mode]["tokens_per_s"] / one[mode]["tokens_per_s"],
                      "peak_gib": [one[mode]["peak_gib"], many[mode]["peak_gib"]]}
    passed = all(row["scaling"] >= SCALING_TARGET for row in rows.values())
    return {"status": "pass" if passed and rows else "fail", "target": SCALING_TARGET, "rows": rows}


def _gain(rows: dict[str, dict] | None) -> float | None:
    if rows is None or not {"dense", "lighthouse"} <= set(rows):
        return None
    return rows["lighthouse"]["tokens_per_s"] / rows["dense"]["tokens_per_s"]


def context_parallel(work: Path, n: int) -> dict:
    one, many = (_bench(work / f"cp-{k}" / "bench_train.json") for k in (1, n))
    if many is None:
        return {"status": "not run"}
    result = {"rows": many, "cp_gain": _gain(many), "one_gpu_gain": _gain(one),
              "one_gpu_rows": one}
    if result["cp_gain"] is None or result["one_gpu_gain"] is None:
        return {**result, "status": "incomplete (a mode or the one-GPU reference did not run)"}
    relative = result["cp_gain"] / result["one_gpu_gain"]
    result["gain_vs_one_gpu"] = relative
    result["first_loss_diff"] = {mode: abs(many[mode]["first_loss"] - one[mode]["first_loss"])
                                 for mode in many if mode in one}
    losses_equal = all(d <= FIRST_STEP_ABS for d in result["first_loss_diff"].values())
    passed = relative >= 1 - GAIN_TOLERANCE and losses_equal
    return {**result, "status": "pass" if passed else "fail"}


def _losses(path: Path) -> dict[tuple, float]:
    """Every logged loss of a run: ``(kind, stage, step, field) -> value``."""
    losses = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for field in ("loss", "val_loss", "val_late_loss"):
            if field in record:
                losses[(record["kind"], record["stage"], record["step"], field)] = record[field]
    return losses


def loss_equality(work: Path, n: int) -> dict:
    paths = work / "loss-1" / "metrics.jsonl", work / f"loss-{n}" / "metrics.jsonl"
    if not all(path.is_file() for path in paths):
        return {"status": "not run"}
    one, many = (_losses(path) for path in paths)
    if set(one) != set(many):
        return {"status": "fail", "why": f"logged steps differ: {sorted(set(one) ^ set(many))}"}
    rows = [{"kind": key[0], "stage": key[1], "step": key[2], "field": key[3], "cp1": one[key],
             f"cp{n}": many[key], "abs_diff": abs(one[key] - many[key])} for key in sorted(one)]
    first = [row for row in rows if row["kind"] == "train" and row["step"] == 1]
    passed = (all(row["abs_diff"] <= FIRST_STEP_ABS for row in first)
              and all(row["abs_diff"] <= LOSS_REL * abs(row["cp1"]) for row in rows))
    return {"status": "pass" if passed and first else "fail",
            "max_abs_diff": max(row["abs_diff"] for row in rows), "rows": rows,
            "tolerance": {"first_step_abs": FIRST_STEP_ABS, "relative": LOSS_REL}}


def _markdown(summary: dict, n: int) -> str:
    lines = [f"# Multi-GPU run: {n} processes ({summary['device']})", ""]
    if summary["device"] == "cpu":
        lines += ["CPU rehearsal: it proves the steps run; its timings and speed verdicts mean "
                  "nothing.", ""]
    part = summary["scaling"]
    lines += [f"## 1. FSDP2 data parallel: {part['status']}", ""]
    if "rows" in part:
        lines += ["| mode | N | 1 GPU tok/s | per GPU tok/s on N | scaling | peak GiB (1 / N) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {mode} | {r['n']} | {r['one_gpu_tok_s']:.0f} | {r['per_gpu_tok_s']:.0f} | "
                  f"{r['scaling']:.3f} | {r['peak_gib'][0]} / {r['peak_gib'][1]} |"
                  for mode, r in part["rows"].items()]
    part = summary["context_parallel"]
    lines += ["", f"## 2. Context parallel: {part['status']}", ""]
    if "rows" in part:
        lines += ["| run | mode | N | tok/s per GPU | step s | peak GiB per GPU | first loss |",
                  "|---|---|---|---|---|---|---|"]
        for name, rows in (("cp", part["rows"]), ("1 GPU", part.get("one_gpu_rows") or {})):
            lines += [f"| {name} | {mode} | {r['n']} | {r['tokens_per_s']:.0f} | "
                      f"{r['step_s']:.2f} | {r['peak_gib']} | {r['first_loss']:.5f} |"
                      for mode, r in rows.items()]
        gains = [part["cp_gain"], part["one_gpu_gain"], part.get("gain_vs_one_gpu")]
        cp_gain, one_gain, ratio = ("-" if g is None else f"{g:.3f}" for g in gains)
        lines += ["", f"Lighthouse/dense gain: cp {cp_gain}x, one GPU {one_gain}x, ratio {ratio} "
                      f"(target >= {1 - GAIN_TOLERANCE:.2f}); first-step losses within "
                      f"{FIRST_STEP_ABS} of one GPU's"]
    part = summary["loss_equality"]
    lines += ["", f"## 3. Losses, cp={n} vs cp=1: {part['status']}", ""]
    if "rows" in part:
        lines += [f"Max |difference| {part['max_abs_diff']:.3g}; tolerance: first step "
                  f"{FIRST_STEP_ABS} absolute, every step {LOSS_REL:.0%} relative.", "",
                  f"| kind | stage | step | field | cp=1 | cp={n} | abs diff |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['kind']} | {r['stage']} | {r['step']} | {r['field']} | {r['cp1']:.6f} | "
                  f"{r[f'cp{n}']:.6f} | {r['abs_diff']:.2e} |" for r in part["rows"]]
    elif "why" in part:
        lines += [part["why"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    work, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    benches = sorted(work.glob("*/bench_train.json"))
    device = json.loads(benches[0].read_text())["device"] if benches else "unknown device"
    summary = {"processes": n, "device": device, "scaling": scaling(work, n),
               "context_parallel": context_parallel(work, n),
               "loss_equality": loss_equality(work, n)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = _markdown(summary, n)
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
