"""Deprecated: the sampler-error measurement moved to :mod:`multilevel_em.calibration.samplers`.

``measure_samplers(pipe, ...)`` here still works (it calls ``pipe``'s own runner); use
:meth:`multilevel_em.images.MultilevelPipeline.calibrate_samplers`, or
:func:`multilevel_em.calibration.samplers.measure_samplers` with a runner of your own.
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional, Sequence

from ..calibration import samplers as _samplers
from ..calibration.samplers import CURVE_STEPS as DEFAULT_STEPS
from ..calibration.samplers import GAIN_BUDGET_FRACTION, GAIN_STEPS, SamplerFit, fit_table, rms_error, squared_distances
from ..calibration.samplers import check_samplers as _check_samplers
from ..diffusion.registry import measurable_samplers

#: Samplers whose step-error curve can be measured pathwise, and their families (the registry's).
MEASURABLE = measurable_samplers()

__all__ = [
    "MEASURABLE",
    "DEFAULT_STEPS",
    "GAIN_BUDGET_FRACTION",
    "GAIN_STEPS",
    "check_samplers",
    "fit_table",
    "measure_samplers",
    "rms_error",
    "squared_distances",
]

warnings.warn(
    "multilevel_em.images.sampler_calibration is deprecated: import from multilevel_em.calibration.samplers "
    "(DEFAULT_STEPS is CURVE_STEPS there), or use MultilevelPipeline.calibrate_samplers",
    DeprecationWarning,
    stacklevel=2,
)


def check_samplers(samplers: Sequence[str]) -> tuple:
    """The names, validated against :data:`MEASURABLE` (ValueError naming the bad one and why), no repeats."""
    return tuple(_check_samplers(samplers, MEASURABLE))


def measure_samplers(
    pipe,
    samplers: Sequence[str] = tuple(MEASURABLE),
    *,
    n: int = 16,
    steps: Sequence[int] = DEFAULT_STEPS,
    ref_steps: int = 500,
    gain_steps: Sequence[int] = GAIN_STEPS,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, SamplerFit]:
    """The fits :meth:`MultilevelPipeline.calibrate_samplers` measures, without storing them in the calibration."""
    L = pipe.ladder
    samplers = _check_samplers(samplers, MEASURABLE)
    return _samplers.measure_samplers(
        pipe.sampler_runner(n, seed),
        pipe.calibration,
        samplers,
        n=n,
        steps=steps,
        ref_steps=ref_steps,
        gain_steps=gain_steps,
        cheapest=L.costs[0] / L.costs[-1],
        num_train_timesteps=L.schedule.num_train_timesteps,
        progress=progress,
    )
