"""Deprecated: run ``mlem bench distill`` (the benchmark lives in multilevel_em/bench/distill.py).

Kept so that ``python benchmarks/distill.py ARGS`` still works: it runs ``mlem bench distill ARGS``."""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from multilevel_em.bench import distill  # noqa: E402

if __name__ == "__main__":
    warnings.warn("benchmarks/distill.py is deprecated: run 'mlem bench distill'", DeprecationWarning, stacklevel=1)
    distill.main(sys.argv[1:])
