"""Is stock SDPA's backward bit-identical run to run? Per backend, with and without
torch.use_deterministic_algorithms(True); dense causal attention, B=1, H=8, D=128, bf16.
Also times fwd+bwd so the cost of determinism shows. Run on a GPU:
    python docs/bench/sdpa_determinism_probe.py 32768
"""

import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
gen = torch.Generator(device="cuda").manual_seed(0)
q, k, v, g = (torch.randn(1, 8, n, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
              for _ in range(4))


def grads():
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*inputs, is_causal=True).backward(g)
    return [t.grad for t in inputs]


def step():
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*inputs, is_causal=True).backward(g)


print(f"N={n}  backend  deterministic  dQ-equal dK-equal dV-equal  fwd+bwd ms")
for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION, None):
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        name = backend.name if backend is not None else "default"
        try:
            context = sdpa_kernel([backend]) if backend is not None else torch.enable_grad()
            with context:
                same = [torch.equal(a, b) for a, b in zip(grads(), grads())]
                ms = do_bench(step, warmup=3, rep=30, return_mode="median")
            print(f"{name:>20} {deterministic!s:>6}  {same[0]!s:>6} {same[1]!s:>6} {same[2]!s:>6}  {ms:8.2f}")
        except RuntimeError as error:
            print(f"{name:>20} {deterministic!s:>6}  error: {str(error).splitlines()[0][:100]}")
torch.use_deterministic_algorithms(False)
