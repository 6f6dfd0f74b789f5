"""The benchmarks behind ``mlem bench NAME``, one module each, listed in :mod:`.registry`.

Shared helpers are in :mod:`.common` (and the chunk-wise KID in :mod:`.chunks`). The main demo job
lives apart, in :mod:`multilevel_em.demo`.
"""

from .registry import BENCHMARKS, Benchmark

__all__ = ["BENCHMARKS", "Benchmark"]
