"""Deprecated: run ``mlem bench jobs`` (the benchmark lives in multilevel_em/bench/jobs_throughput.py).

Kept so that ``python benchmarks/jobs_throughput.py ARGS`` still works: it runs ``mlem bench jobs ARGS``."""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from multilevel_em.bench import jobs_throughput  # noqa: E402

if __name__ == "__main__":
    warnings.warn("benchmarks/jobs_throughput.py is deprecated: run 'mlem bench jobs'", DeprecationWarning, stacklevel=1)
    jobs_throughput.main(sys.argv[1:])
