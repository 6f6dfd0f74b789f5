"""Deprecated: run ``mlem bench wallclock`` (the benchmark lives in multilevel_em/bench/wallclock.py).

Kept so that ``python benchmarks/wallclock.py ARGS`` still works: it runs ``mlem bench wallclock ARGS``."""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from multilevel_em.bench import wallclock  # noqa: E402

if __name__ == "__main__":
    warnings.warn("benchmarks/wallclock.py is deprecated: run 'mlem bench wallclock'", DeprecationWarning, stacklevel=1)
    wallclock.main(sys.argv[1:])
