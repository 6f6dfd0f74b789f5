"""Calibration: measure a ladder, choose ML-EM rates, predict costs and plan runs.

``calibrate(ladder, x, t0=..., t1=...)`` measures level costs and the level differences
delta_l(t) along trajectories and returns a :class:`Calibration`, whose ``rates(mu)`` are
the closed-form rates lambda_l(t) = mu delta_l(t) / sqrt(c_l + c_{l-1}) (docs/method.md,
"Choosing the rates"), ``predict(mu, steps)`` their expected cost, and ``plan(target=...)`` a full
choice of levels, rate scale and steps. Imports the engine; the engine does not import it.

Modules: :mod:`.measure` (calibrate), :mod:`.model` (the Calibration data and its JSON file),
:mod:`.rates` (the rate math and rate callables, one home), :mod:`.prediction`, :mod:`.planning`,
:mod:`.verdicts`, :mod:`.samplers` (sampler step-error curves: the SamplerFit model and its
measurement), :mod:`.pipeline_measurements` and :mod:`.schedules` (schedules of models planned from
measurements along a pipeline's own calls), :mod:`.plot`.
"""

from .measure import MIN_STATES, MIN_TIMES, calibrate
from .model import Calibration, CallPlan, PiecewiseLinearRate, Plan, Prediction, ScheduleCalibration
from .planning import budget_steps
from .rates import ReverseTimeRate
from .samplers import SamplerFit

__all__ = [
    "calibrate",
    "CallPlan",
    "Calibration",
    "Plan",
    "Prediction",
    "PiecewiseLinearRate",
    "SamplerFit",
    "ScheduleCalibration",
    "MIN_STATES",
    "MIN_TIMES",
    "ReverseTimeRate",
    "budget_steps",
]
