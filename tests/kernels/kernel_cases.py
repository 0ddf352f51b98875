"""The cases the gather-pool and scatter-back kernel tests share: configurations, head
layouts, shapes, and a real selection to gather or scatter with. Imported by name
(``tests/kernels/conftest.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch

from lighthouse_kernels import LighthouseConfig, select_indices
from lighthouse_kernels._triton_utils import use_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (N, L, p, k, m): p = 2, 4, 8 and L = 2..5; N272 and N176 give an odd S (odd coarsest count).
CONFIGS = {
    "N512-L3-p4-k32-m16": (512, 3, 4, 32, 16),
    "N272-L3-p4-k16-m16": (272, 3, 4, 16, 16),
    "N384-L2-p2-k16-m8": (384, 2, 2, 16, 8),
    "N1024-L3-p8-k16-m16": (1024, 3, 8, 16, 16),
    "N384-L2-p8-k32-m16": (384, 2, 8, 32, 16),
    "N256-L4-p2-k8-m4": (256, 4, 2, 8, 4),
    "N176-L5-p2-k4-m4": (176, 5, 2, 4, 4),
    "N16384-L3-p4-k512-m128": (16384, 3, 4, 512, 128),
    "N8192-L3-p8-k128-m64": (8192, 3, 8, 128, 64),
    "N4096-L5-p2-k64-m32": (4096, 5, 2, 64, 32),
}
# (query heads, KV heads): GQA ratios 1, 3, 4 (and 5), odd head counts.
HEADS = {"H3-G3": (3, 3), "H6-G2": (6, 2), "H8-G2": (8, 2), "H5-G1": (5, 1), "H3-G1": (3, 1),
         "H16-G2": (16, 2)}
# (config, heads, head dim): small shapes for the interpreter; the GPU adds realistic ones.
CPU_CASES = [
    ("N256-L4-p2-k8-m4", "H16-G2", 16),  # GQA ratio 8
    ("N512-L3-p4-k32-m16", "H6-G2", 40),
    ("N272-L3-p4-k16-m16", "H5-G1", 16),
    ("N384-L2-p2-k16-m8", "H3-G3", 64),
    ("N1024-L3-p8-k16-m16", "H8-G2", 16),
    ("N384-L2-p8-k32-m16", "H3-G1", 24),
    ("N256-L4-p2-k8-m4", "H8-G2", 32),
    ("N176-L5-p2-k4-m4", "H3-G3", 40),
]
GPU_CASES = [
    ("N16384-L3-p4-k512-m128", "H8-G2", 128),
    ("N8192-L3-p8-k128-m64", "H6-G2", 96),
    ("N4096-L5-p2-k64-m32", "H5-G1", 256),
    ("N16384-L3-p4-k512-m128", "H3-G3", 64),
]
CASES = {f"{name}-{heads}-D{dim}": (name, heads, dim)
         for name, heads, dim in CPU_CASES + (GPU_CASES if DEVICE == "cuda" else [])}
LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 on every case; fp16 takes the same code path, so two cases cover it.
LOW_PRECISION_CASES = ([(case, "bf16") for case in CASES]
                       + [(case, "fp16") for case in list(CASES)[:2]])


def selection_problem(case: str, *, seed: int = 0, batch: int = 2):
    """Float32 query ``[B, H, N, D]`` and key ``[B, G, N, D]``, their real selection, the
    config, and the generator (to draw more inputs from the same seed)."""
    name, heads, dim = CASES[case]
    n, levels, pooling, topk, tile = CONFIGS[name]
    config = LighthouseConfig(levels=levels, pooling=pooling, topk=topk, tile=tile)
    num_heads, kv_heads = HEADS[heads]
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    query = torch.randn(batch, num_heads, n, dim, generator=gen, device=DEVICE)
    key = torch.randn(batch, kv_heads, n, dim, generator=gen, device=DEVICE)
    index = select_indices(query, key, config=config)
    assert use_triton(query), ("the Triton path is not in use (were the kernels imported before "
                                "TRITON_INTERPRET=1 was set?): nothing would be tested")
    return query, key, index, config, gen
