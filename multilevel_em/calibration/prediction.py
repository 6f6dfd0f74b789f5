"""Prediction from a calibration: closed-form rates and the expected cost and added variance of ML-EM.

For a :class:`~multilevel_em.Calibration` ``cal`` (its data: costs, delta_l(t) at the measured times):

* :func:`rates`: lambda_l(t) = mu delta_l(t) / sqrt(C_l), C_l = c_l + c_{l-1}, piecewise linear between
  the measured times (docs/method.md, "Choosing the rates"); :func:`uniform_rates`: the constant ones;
* :func:`predict`: on a uniform grid of ``steps`` steps, the expected cost per sample of ML-EM with those
  rates (the cost-sharing rule, :func:`multilevel_em.calibration.rates.expected_cost`), its per-sample
  spread, and the variance the randomization adds (:func:`~multilevel_em.calibration.rates.added_variance`).

Costs are in ``cal.cost_unit`` per sample, or top-level equivalents; variances in state units squared.
The functions take the calibration as their first argument; :class:`~multilevel_em.Calibration`'s
methods of the same names call them.  This module does not import :mod:`.model` (its data class).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..engine.rates import firing_probability
from .rates import PiecewiseLinearRate, added_variance, idle_probabilities

__all__ = [
    "PLAN_POINTS",
    "Prediction",
    "check_mu",
    "cost_stats",
    "predict",
    "probabilities",
    "profile",
    "rates",
    "step_grid",
    "uniform_rates",
    "variances",
]

#: Above this many steps, plans and predictions sum the per-step terms over this many evenly spread
#: steps (each standing for steps / PLAN_POINTS of them): delta_l(t) is piecewise linear between a few
#: measured times, so the sums change by far less than the model's own error.
PLAN_POINTS = 512


@dataclass
class Prediction:
    """Predicted cost and added variance of one ML-EM configuration, per sample.

    Attributes:
        mu: the rate scale.
        steps: uniform steps over [t0, t1].
        levels: the 0-based ladder levels used (``Ladder.select`` indices).
        uniform: True for :meth:`Calibration.uniform_rates`, False for the time-dependent ones.
        evaluations: expected evaluations of each used level per sample (the base level: steps).
        cost: expected cost per sample, in ``Calibration.cost_unit``.
        cost_sd: standard deviation of one sample's cost (per-sample draws), same unit; the
            mean cost of a batch of n has standard error ``cost_sd / sqrt(n)``.
        top_equivalents: ``cost`` / the full ladder's top-level cost.
        ladder_cost, ladder_cost_sd: the same in the ladder's own cost units (compare with
            ``Solution.cost``).
        added_variance: predicted squared RMS error added at t1 by the randomization,
            ``sum_n h^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)`` (state units squared; see the
            module docstring: an approximation ignoring propagation by the dynamics).
    """

    mu: float
    steps: int
    levels: Tuple[int, ...]
    uniform: bool
    evaluations: Tuple[float, ...]
    cost: float
    cost_sd: float
    top_equivalents: float
    ladder_cost: float
    ladder_cost_sd: float
    added_variance: float

    def to_dict(self) -> dict:
        return asdict(self)


def rates(cal, mu: float, levels: Optional[Sequence[int]] = None) -> List[PiecewiseLinearRate]:
    """Closed-form time-dependent rates lambda_l(t) = mu delta_l(t) / sqrt(C_l).

    Args:
        mu: the scale trading cost for accuracy (rates per unit time are proportional to it).
        levels: optional 0-based levels of a sub-ladder (default all); delta and C are then
            those of consecutive kept levels.

    Returns:
        ``len(levels) - 1`` callables of t (piecewise linear between the calibration
        times, constant outside), ready for ``solve(..., rates=...)``.
    """
    mu = check_mu(mu)
    delta, C = cal.corrections(cal.level_indices(levels))
    return [PiecewiseLinearRate(cal.times, mu * delta[:, c] / math.sqrt(C[c])) for c in range(len(C))]


def uniform_rates(cal, mu: float, levels: Optional[Sequence[int]] = None) -> List[float]:
    """Constant rates lambda_l = mu delta_l_bar / sqrt(C_l), for comparisons.

    ``delta_l_bar`` is the root of the time average of delta_l(t)^2 over [t0, t1] (the
    best constant allocation: for constant rates the added variance involves the
    integral of delta_l^2).
    """
    mu = check_mu(mu)
    delta, C = cal.corrections(cal.level_indices(levels))
    bar = cal.delta_rms_in_time(delta)
    return [float(mu * bar[c] / math.sqrt(C[c])) for c in range(len(C))]


def step_grid(cal, steps: int, max_points: Optional[int]) -> Tuple[np.ndarray, np.ndarray, float]:
    """Step start times t_n, (M,), their weights (how many steps each stands for), and h."""
    h = (cal.t1 - cal.t0) / steps
    if max_points is None or steps <= max_points:
        n = np.arange(steps)
        w = np.ones(steps)
    else:
        n = np.floor((np.arange(max_points) + 0.5) * steps / max_points)
        w = np.full(max_points, steps / max_points)
    return cal.t0 + n * h, w, h


def profile(cal, levels, steps, uniform, max_points=None):
    """Per-step quantities for a sub-ladder: delta (M, L-1), rate per mu (M, L-1), weights, h."""
    delta, C = cal.corrections(levels)
    ts, w, h = step_grid(cal, steps, max_points)
    if uniform:
        d_rate = np.broadcast_to(cal.delta_rms_in_time(delta), (len(ts), len(C)))
    else:
        d_rate = np.stack([np.interp(ts, cal.times, delta[:, c]) for c in range(len(C))], 1)
    d_true = np.stack([np.interp(ts, cal.times, delta[:, c]) for c in range(len(C))], 1)
    return d_true, d_rate / np.sqrt(C), w, h


def cost_stats(cal, levels, mus: np.ndarray, d_true, rate_per_mu, w, h, costs=None):
    """Vectorised over ``mus`` (G,): expected evaluations (G, L), cost mean and variance
    per sample (G,) (in the unit of ``costs``, default ``cal.costs``), and added variance (G,).

    d_true, rate_per_mu: (M, L-1) delta and rate per unit mu at the steps (:func:`profile`); w: (M,)
    step weights; h: the step."""
    costs = cal.costs if costs is None else costs
    c = costs[np.asarray(levels)]  # (L,)
    p = firing_probability(mus[:, None, None] * rate_per_mu[None], h)  # (G, M, L-1)
    q = 1.0 - p
    G, M, L1 = p.shape
    # u[..., i]: probability that level i of the sub-ladder is NOT needed on a step (the cost-sharing
    # rule): level 0 always is, level i >= 1 unless neither correction i nor i + 1 fires.
    u = np.concatenate([np.zeros((G, M, 1)), idle_probabilities(p)], 2)  # (G, M, L)
    evaluations = ((1.0 - u) * w[None, :, None]).sum(1)  # (G, L)
    mean = evaluations @ c
    # Per-step variance of sum_i c_i N_i, N_i = 1{level i needed}; neighbours share a draw.
    var_step = (c**2 * u * (1 - u)).sum(2)
    if L1 >= 2:
        # P(N_i = 0 and N_{i+1} = 0) = q_i q_{i+1} q_{i+2} for i >= 1 (q_L = 1).
        q_next = np.concatenate([q[:, :, 1:], np.ones((G, M, 1))], 2)  # correction i + 1 (none above the top)
        both0 = q[:, :, :-1] * q[:, :, 1:] * q_next[:, :, 1:]
        cov = both0 - u[:, :, 1:-1] * u[:, :, 2:]
        var_step = var_step + 2 * (c[1:-1] * c[2:] * cov).sum(2)
    var = (var_step * w[None]).sum(1)
    return evaluations, mean, var, variances(mus, d_true, rate_per_mu, w, h)


def predict(cal, mu: float, steps: int, *, levels: Optional[Sequence[int]] = None, uniform: bool = False) -> Prediction:
    """Expected cost and added variance per sample of ML-EM with ``rates(mu)``.

    On the uniform grid t_n = t0 + n h, h = (t1 - t0) / steps, with p_{n,l} =
    min(1, lambda_l(t_n) h) and the cost-sharing rule of :func:`~multilevel_em.solve`
    (level 1 every step; level j >= 2 when B_j or B_{j+1} fires): expected cost per step
    ``c_1 + sum_{j>=2} c_j (1 - (1 - p_j)(1 - p_{j+1}))``, p_{K+1} = 0.  Above 512 steps the
    sums run over 512 evenly spread steps, each weighted by ``steps / 512`` (as in :func:`~multilevel_em.calibration.planning.plan`):
    bounded time at any step count.

    Args:
        mu: the rate scale of :func:`rates` (or of :func:`uniform_rates` with ``uniform=True``).
        steps: the number of uniform steps.
        levels: optional 0-based sub-ladder (default all levels).
        uniform: predict for :func:`uniform_rates` instead.

    Returns:
        A :class:`Prediction`.
    """
    mu = check_mu(mu)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    lv = cal.level_indices(levels)
    # The same bounded grid as plan(): above PLAN_POINTS steps, evenly spread steps stand for the
    # rest, so a prediction for 10**9 steps takes as long as one for 512 (and agrees with the plan).
    d_true, rpm, w, h = profile(cal, lv, steps, uniform, PLAN_POINTS)
    mus = np.array([mu])
    ev, mean, var, added = cost_stats(cal, lv, mus, d_true, rpm, w, h)
    _, l_mean, l_var, _ = cost_stats(cal, lv, mus, d_true, rpm, w, h, costs=cal.ladder_costs)
    return Prediction(
        mu=mu,
        steps=steps,
        levels=lv,
        uniform=bool(uniform),
        evaluations=tuple(float(e) for e in ev[0]),
        cost=float(mean[0]),
        cost_sd=float(math.sqrt(max(var[0], 0.0))),
        top_equivalents=float(mean[0] / cal.costs[-1]),
        ladder_cost=float(l_mean[0]),
        ladder_cost_sd=float(math.sqrt(max(l_var[0], 0.0))),
        added_variance=float(added[0]),
    )


def probabilities(mus: np.ndarray, rate_per_mu: np.ndarray, h: float) -> np.ndarray:
    """p = min(1, mu lambda h) for each mu in ``mus`` (G,): (G, M, L-1) from rates per unit mu (M, L-1)."""
    return firing_probability(mus[:, None, None], (rate_per_mu * h)[None])


def variances(mus: np.ndarray, d_true: np.ndarray, rate_per_mu: np.ndarray, w: np.ndarray, h: float) -> np.ndarray:
    """The added variance ``sum_n w_n h^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)`` for each mu in ``mus``
    (G,) -> (G,), state units squared."""
    return added_variance(probabilities(mus, rate_per_mu, h), d_true, h, w)


def check_mu(mu) -> float:
    """``mu`` as a float, or TypeError/ValueError unless it is a finite number >= 0."""
    try:
        mu = float(mu)
    except (TypeError, ValueError):
        raise TypeError(f"mu: expected a number, got {mu!r}") from None
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu: expected a finite number >= 0, got {mu}")
    return mu
