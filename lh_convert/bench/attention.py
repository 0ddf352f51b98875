"""The attention benchmark of BENCH.md: Lighthouse vs dense causal SDPA, one layer, one GPU.

For each length: a correctness check of the fast path against the reference (refusing to
report speed for a failed check), a determinism check, then median timings (CUDA events via
``triton.testing.do_bench``) of dense SDPA, Lighthouse and SDPA alone on the selected length
``S`` (the floor), forward and forward+backward, and Lighthouse's peak memory. Prints a table
and one final JSON line; writes the JSON and a log-log PNG plot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lighthouse_kernels import LighthouseConfig, lighthouse_attention, lighthouse_attention_ref

from ..util.determinism import deterministic_algorithms
from ..util.errors import LhConvertError
from ..util.figures import pyplot, save_figure


@dataclass(frozen=True)
class BenchRow:
    n: int
    topk: int
    combine: str
    selected: int
    dense_fwd_ms: float
    dense_fwdbwd_ms: float
    lighthouse_fwd_ms: float
    lighthouse_fwdbwd_ms: float
    floor_fwdbwd_ms: float
    lighthouse_peak_gib: float
    max_abs_err: float
    dq_deterministic: bool | None

    @property
    def speedup(self) -> float:
        return self.dense_fwdbwd_ms / self.lighthouse_fwdbwd_ms

    @property
    def floor_speedup(self) -> float:
        return self.dense_fwdbwd_ms / self.floor_fwdbwd_ms


def _median_ms(function: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return float(do_bench(function, warmup=5, rep=50, return_mode="median"))


def _fwd_bwd(attend: Callable[..., torch.Tensor], q, k, v, grad) -> Callable[[], None]:
    def step() -> None:
        for tensor in (q, k, v):
            tensor.grad = None
        attend(q, k, v).backward(grad)
    return step


def check_against_reference(*, n: int, config: LighthouseConfig, heads: int, dim: int,
                            device: str, seed: int = 0) -> tuple[float, bool]:
    """Max-abs error of the fast path (bf16) vs the reference in float32, outputs and gradients,
    and whether dQ was bit-identical over two runs.

    Raises LhConvertError when the error exceeds twice that of the reference run in bf16, or
    when the output, dK or dV differ between two runs.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    q, k, v, grad = (torch.randn(1, heads, n, dim, device=device, generator=gen) for _ in range(4))

    def run(attend, dtype):
        inputs = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
        out = attend(*inputs, config=config)
        out.backward(grad.to(dtype))
        return [out.float()] + [t.grad.float() for t in inputs]

    exact = run(lighthouse_attention_ref, torch.float32)
    fast = run(lighthouse_attention, torch.bfloat16)
    low = run(lighthouse_attention_ref, torch.bfloat16)
    errors = [(a - b).abs().max().item() for a, b in zip(fast, exact)]
    bounds = [2 * (a - b).abs().max().item() + 1e-3 for a, b in zip(low, exact)]
    if not all(e <= b for e, b in zip(errors, bounds)):
        raise LhConvertError(f"correctness check failed at N={n}: errors {errors} exceed 2x the "
                             f"bf16 reference's {bounds}; no timing is reported")
    again = run(lighthouse_attention, torch.bfloat16)
    same = [torch.equal(a, b) for a, b in zip(fast, again)]
    # Stock SDPA's flash backward accumulates dQ with atomics (dense SDPA too), so dQ alone
    # may differ run to run; everything Lighthouse itself computes must be bit-identical.
    # Under torch.use_deterministic_algorithms(True) SDPA's backward is deterministic too.
    if not (same[0] and same[2] and same[3]) or (torch.are_deterministic_algorithms_enabled()
                                                 and not same[1]):
        raise LhConvertError(f"determinism check failed at N={n}: output/dQ/dK/dV equal = "
                             f"{'/'.join(str(x) for x in same)}")
    return max(errors), same[1]


def check_length(n: int, config: LighthouseConfig, *, cap: int = 32768) -> int:
    """The longest length <= ``cap`` (bounding the float32 reference's memory) at which
    Lighthouse runs with ``config`` (no fallback), or ``n`` itself when there is none."""
    step = config.coarsest_window * config.num_tiles
    candidate = min(n, cap) // step * step
    while candidate >= config.min_length():
        if config.length_problem(candidate) is None:
            return candidate
        candidate -= step
    return n


def bench_length(*, n: int, config: LighthouseConfig, heads: int = 8, dim: int = 128,
                 device: str = "cuda", check: bool = True) -> BenchRow:
    check_n = check_length(n, config)
    err, dq_deterministic = check_against_reference(
        n=check_n, config=config, heads=heads, dim=dim, device=device) if check else (float("nan"), None)
    q, k, v, grad = (torch.randn(1, heads, n, dim, device=device, dtype=torch.bfloat16)
                     for _ in range(4))
    for tensor in (q, k, v):
        tensor.requires_grad_()
    dense = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True)  # noqa: E731
    light = lambda a, b, c: lighthouse_attention(a, b, c, config=config)  # noqa: E731
    selected = config.selected_length(n)
    fq, fk, fv, fg = (torch.randn(1, heads, selected, dim, device=device, dtype=torch.bfloat16,
                                  requires_grad=i < 3) for i in range(4))
    with torch.no_grad():
        dense_fwd = _median_ms(lambda: dense(q, k, v))
        light_fwd = _median_ms(lambda: light(q, k, v))
    dense_fb = _median_ms(_fwd_bwd(dense, q, k, v, grad))
    floor_fb = _median_ms(_fwd_bwd(dense, fq, fk, fv, fg))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    light_fb = _median_ms(_fwd_bwd(light, q, k, v, grad))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return BenchRow(n=n, topk=config.topk, combine=config.combine, selected=selected,
                    dense_fwd_ms=dense_fwd,
                    dense_fwdbwd_ms=dense_fb, lighthouse_fwd_ms=light_fwd,
                    lighthouse_fwdbwd_ms=light_fb, floor_fwdbwd_ms=floor_fb,
                    lighthouse_peak_gib=peak, max_abs_err=err, dq_deterministic=dq_deterministic)


def stage_breakdown(*, n: int, config: LighthouseConfig, heads: int = 8, dim: int = 128,
                    device: str = "cuda") -> dict[str, float]:
    """Median ms of each stage, forward+backward where it has one: where the time goes."""
    from lighthouse_kernels import select_indices
    from lighthouse_kernels.gather import gather_pool
    from lighthouse_kernels.scatter import scatter_back

    q, k, v = (torch.randn(1, heads, n, dim, device=device, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    index = select_indices(q, k, config=config)
    selected = index.shape[-1]
    gathered = torch.randn(1, heads, selected, dim, device=device, dtype=torch.bfloat16,
                           requires_grad=True)
    grad_s = torch.randn_like(gathered)
    grad_n = torch.randn_like(q)

    def gather_step() -> None:
        for x in (q, k, v):
            gather_pool(x, index, config=config).backward(grad_s)

    def scatter_step() -> None:
        scatter_back(gathered, index, n=n, config=config).backward(grad_n)

    dense = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True)  # noqa: E731
    fq, fk, fv = (torch.randn(1, heads, selected, dim, device=device, dtype=torch.bfloat16,
                              requires_grad=True) for _ in range(3))
    return {"select_ms": _median_ms(lambda: select_indices(q, k, config=config)),
            "gather_qkv_fwdbwd_ms": _median_ms(gather_step),
            "sdpa_on_s_fwdbwd_ms": _median_ms(_fwd_bwd(dense, fq, fk, fv, grad_s)),
            "scatter_fwdbwd_ms": _median_ms(scatter_step)}


def plot(rows: list[BenchRow], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fixed = sorted({r.topk for r in rows if sum(o.topk == r.topk for o in rows) > 1})
    series = []
    for combine in dict.fromkeys(r.combine for r in rows):
        rule = "" if combine == "sum" else f", {combine}"
        mine = [r for r in rows if r.combine == combine]
        series += [(f"k={topk}{rule}", [r for r in mine if r.topk == topk]) for topk in fixed]
        series.append((f"k=N/64{rule}", [r for r in mine if r.topk == r.n // 64]))
    for label, sub in series:
        if not sub:
            continue
        ns = [r.n for r in sub]
        ax.plot(ns, [r.lighthouse_fwdbwd_ms for r in sub], "o-", label=f"Lighthouse {label}")
        ax.plot(ns, [r.floor_fwdbwd_ms for r in sub], "x:", label=f"SDPA on S (floor) {label}")
    dense = {r.n: r.dense_fwdbwd_ms for r in rows}
    ax.plot(sorted(dense), [dense[n] for n in sorted(dense)], "s-k", label="dense SDPA")
    ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="fwd+bwd time (ms)",
           title="Lighthouse vs dense causal SDPA (B=1, H=8, D=128, bf16)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def run_benchmark(*, lengths: list[int], topks: list[int | str], out_dir: Path,
                  echo: Callable[[str], None], levels: int = 3, pooling: int = 4,
                  breakdown: bool = True, deterministic: bool = False,
                  combines: tuple[str, ...] = ("sum",)) -> list[BenchRow]:
    """Run BENCH.md's protocol; ``topks`` entries are ints or ``"n/64"`` (the paper's setting),
    each under every scatter-back rule of ``combines`` (SPEC §7; side by side in one run).

    ``deterministic`` runs everything under ``torch.use_deterministic_algorithms(True)``, where
    SDPA's backward is deterministic too, and then requires a bit-identical dQ.
    """
    if not torch.cuda.is_available():
        raise LhConvertError("the attention benchmark needs a CUDA GPU; run it on a GPU machine")
    rows, breakdowns = [], []
    echo(f"{'N':>8} {'k':>6} {'rule':>6} {'S':>7} {'dense f':>9} {'dense fb':>9} {'LH f':>8} {'LH fb':>8} "
         f"{'floor fb':>9} {'speedup':>8} {'floor x':>8} {'peak GiB':>9} {'err':>8}")
    for n in lengths:
        for k, combine in ((k, c) for k in dict.fromkeys(
                n // 64 if topk == "n/64" else int(topk) for topk in topks) for c in combines):
            config = LighthouseConfig(levels=levels, pooling=pooling, topk=k, combine=combine)
            problem = config.length_problem(n)
            if problem is not None:
                echo(f"{n:>8} {k:>6} {combine:>6} skipped: {problem}")
                continue
            with deterministic_algorithms(deterministic):
                row = bench_length(n=n, config=config)
            rows.append(row)
            echo(f"{n:>8} {k:>6} {combine:>6} {row.selected:>7} {row.dense_fwd_ms:>9.2f} {row.dense_fwdbwd_ms:>9.2f} "
                 f"{row.lighthouse_fwd_ms:>8.2f} {row.lighthouse_fwdbwd_ms:>8.2f} "
                 f"{row.floor_fwdbwd_ms:>9.2f} {row.speedup:>7.1f}x {row.floor_speedup:>7.1f}x "
                 f"{row.lighthouse_peak_gib:>9.2f} {row.max_abs_err:>8.1e}")
            if breakdown:
                with deterministic_algorithms(deterministic):
                    stages = stage_breakdown(n=n, config=config)
                breakdowns.append({"n": n, "topk": k, "combine": combine, **stages})
                echo("         stages: " + ", ".join(f"{name} {ms:.2f}" for name, ms in stages.items()))
            torch.cuda.empty_cache()
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "levels": levels, "pooling": pooling,
              "deterministic": deterministic,
              "rows": [{**asdict(r), "speedup": r.speedup, "floor_speedup": r.floor_speedup}
                       for r in rows],
              "stages": breakdowns}
    (out_dir / "bench_attention.json").write_text(json.dumps(record, indent=2))
    plot(rows, out_dir / "bench_attention.png")
    echo(json.dumps(record))
    return rows
