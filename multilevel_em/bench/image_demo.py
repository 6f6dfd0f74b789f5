"""Deprecated: moved to :mod:`multilevel_em.demo.images` (the demo lives apart from the benchmarks).

Every name of the new module is reachable here, with a DeprecationWarning on import."""

import warnings

from ..demo import images as _moved
from ..demo.images import *  # noqa: F403

warnings.warn("multilevel_em.bench.image_demo moved to multilevel_em.demo.images", DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)
