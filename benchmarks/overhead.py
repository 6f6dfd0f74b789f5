"""Deprecated: run ``mlem bench overhead`` (the benchmark lives in multilevel_em/bench/overhead.py).

Kept so that ``python benchmarks/overhead.py ARGS`` still works: it runs ``mlem bench overhead ARGS``."""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from multilevel_em.bench import overhead  # noqa: E402

if __name__ == "__main__":
    warnings.warn("benchmarks/overhead.py is deprecated: run 'mlem bench overhead'", DeprecationWarning, stacklevel=1)
    overhead.main(sys.argv[1:])
