"""Deprecated: moved to :mod:`multilevel_em.demo.htmc` (the demo lives apart from the benchmarks).

Every name of the new module is reachable here, with a DeprecationWarning on import."""

import warnings

from ..demo import htmc as _moved
from ..demo.htmc import *  # noqa: F403

warnings.warn("multilevel_em.bench.demo moved to multilevel_em.demo.htmc", DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)
