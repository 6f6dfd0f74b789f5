"""Deprecated: run ``mlem bench cfg-pairing`` (the benchmark lives in multilevel_em/bench/cfg_pairing.py).

Kept so that ``python benchmarks/cfg_pairing.py ARGS`` still works: it runs ``mlem bench cfg-pairing ARGS``."""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from multilevel_em.bench import cfg_pairing  # noqa: E402

if __name__ == "__main__":
    warnings.warn("benchmarks/cfg_pairing.py is deprecated: run 'mlem bench cfg-pairing'", DeprecationWarning, stacklevel=1)
    cfg_pairing.main(sys.argv[1:])
