"""Deprecated: run ``mlem bench gpu`` (the benchmark lives in multilevel_em/bench/gpu_images.py).

Kept so that ``python benchmarks/gpu_images.py ARGS`` still works: it runs ``mlem bench gpu ARGS``."""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from multilevel_em.bench import gpu_images  # noqa: E402

if __name__ == "__main__":
    warnings.warn("benchmarks/gpu_images.py is deprecated: run 'mlem bench gpu'", DeprecationWarning, stacklevel=1)
    gpu_images.main(sys.argv[1:])
