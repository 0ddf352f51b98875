"""Benchmarks (BENCH.md): one attention layer (``attention``) and a whole training step
(``train``), recorded in docs/benchmarks.md."""
