"""Rate math, the one home: expected cost, added variance, the search for mu, rate shapes and rate callables.

ML-EM fires correction l (levels l and l - 1 of a (sub-)ladder of L levels) on step or call n with
probability p_{n,l} = min(1, lambda_l(t_n) h_n) (:func:`~multilevel_em.engine.firing_probability`).
Everything that turns rates into costs, variances and probabilities, or a budget into rates, is here:

* :func:`expected_cost`: the cost-sharing rule of :func:`~multilevel_em.solve`: level 1 runs on every
  step, level i >= 2 when correction i or i + 1 fires (:func:`idle_probabilities`: the chance it does not);
* :func:`added_variance`: ``sum_n w_n h^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)``, the variance the draws
  add (state units squared), ignoring propagation through the dynamics;
* :func:`search_threshold` / :func:`search_mu`: the smallest or largest rate scale mu meeting a monotone
  condition (a cost within a budget, a variance within room);
* :func:`closed_form_probabilities`: the per-call closed form p = min(1, max(floor, mu shape h / sqrt(C)))
  at the mu whose expected cost is a budget (:meth:`Calibration.plan_calls
  <multilevel_em.Calibration.plan_calls>`, :class:`RateShape`);
* rate rules chosen by name (:data:`RATE_RULES`, :func:`rate_shape`): "closed" (delta_l(t), docs/method.md,
  "Choosing the rates"), "sensitivity" (s_l(t) delta_l(t), a measured propagation) and "learned"
  (:func:`multilevel_em.diffusion.learn_probabilities`, which runs the sampler);
* the rate callables :func:`~multilevel_em.solve` and the denoisers take: :class:`PiecewiseLinearRate`
  (:func:`per_call_rates` builds them from per-call probabilities) and :class:`ReverseTimeRate` (a rate
  of reverse time s = t_max - t as a rate of t).

Shapes: M steps or calls, L levels kept (L - 1 corrections), G values of mu at once.  Costs are in any one
unit per sample (the caller's); probabilities are dimensionless.  Imports the engine only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..engine.rates import firing_probability

__all__ = [
    "PiecewiseLinearRate",
    "RATE_RULES",
    "RateShape",
    "ReverseTimeRate",
    "added_variance",
    "closed_form_probabilities",
    "expected_cost",
    "idle_probabilities",
    "per_call_rates",
    "rate_shape",
    "search_mu",
    "search_threshold",
]


# ----------------------------------------------------------------------------- rate callables


class PiecewiseLinearRate:
    """A rate lambda(t) per unit time, piecewise linear through the knots ``(times[i], values[i])``.

    ``times`` (T,) in any order (sorted here), ``values`` (T,) rates per unit time; constant outside
    [min(times), max(times)].  A plain picklable callable ``float -> float``, as
    :func:`~multilevel_em.solve` expects in ``rates``.
    """

    def __init__(self, times: Sequence[float], values: Sequence[float]):
        times = np.asarray(times, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        if times.shape != values.shape or times.ndim != 1 or times.size == 0:
            raise ValueError(
                f"times, values: expected two equal-length 1-d sequences, got shapes {times.shape} and {values.shape}"
            )
        if np.any(np.diff(times) < 0):
            order = np.argsort(times)
            times, values = times[order], values[order]
        self.times, self.values = times, values

    def __call__(self, t) -> float:
        return float(np.interp(float(t), self.times, self.values))

    def __repr__(self) -> str:
        return f"PiecewiseLinearRate({len(self.times)} knots, {self.values.min():.4g}..{self.values.max():.4g})"


class ReverseTimeRate:
    """A rate of reverse time s = t_max - t (e.g. from a Calibration measured in reverse time) as a rate
    of diffusion time t: ``ReverseTimeRate(rate, t_max)(t) = rate(t_max - t)`` (per unit time, the same
    in both since ds = -dt)."""

    def __init__(self, rate: Callable[[float], float], t_max: float):
        self.rate, self.t_max = rate, float(t_max)

    def __call__(self, t) -> float:
        return self.rate(self.t_max - float(t))

    def __repr__(self) -> str:
        return f"ReverseTimeRate({self.rate!r}, t_max={self.t_max})"


def per_call_rates(times: np.ndarray, spans: np.ndarray, p: np.ndarray) -> List[PiecewiseLinearRate]:
    """Rate callables giving probabilities ``p`` at a sampler's calls: lambda_l(t_n) = p_{n,l} / h_n.

    times (N,) and spans (N,) (> 0): the calls' t and span; p (N, L - 1).  Linear in t between the calls
    (exact at them), one callable per correction."""
    times = np.asarray(times, dtype=np.float64)
    return [PiecewiseLinearRate(times, p[:, l] / spans) for l in range(p.shape[1])]


# ----------------------------------------------------------------------------- costs and variances


def idle_probabilities(p: np.ndarray) -> np.ndarray:
    """The probability that level i = 1..L-1 (0-based; level 0 always runs) is *not* needed on a step:
    neither correction i nor correction i + 1 fires, ``(1 - p_i)(1 - p_{i+1})`` with p_L = 0.

    p: (..., M, L - 1) firing probabilities (clipped to [0, 1]); returns the same shape."""
    q = 1.0 - np.clip(p, 0.0, 1.0)
    q_next = np.concatenate([q[..., 1:], np.ones_like(q[..., :1])], -1)
    return q * q_next


def expected_cost(p: np.ndarray, costs: Sequence[float], weights: Optional[np.ndarray] = None):
    """Expected cost per sample: sum over steps of c_1 + sum_{i >= 2} c_i P(level i needed).

    p: (..., M, L - 1) firing probabilities of corrections 2..L; costs: (L,) the kept levels' costs (any unit);
    weights: optional (M,) how many steps each row stands for (default 1 each).  Returns a float for p of
    shape (M, L - 1), else an array of the leading shape (...), in the unit of ``costs``.
    """
    c = np.asarray(costs, dtype=float)
    needed = 1.0 - idle_probabilities(np.asarray(p, dtype=float))
    if weights is None:
        out = c[0] * needed.shape[-2] + (needed @ c[1:]).sum(-1)
    else:
        out = c[0] * weights.sum() + (needed @ c[1:]) @ weights
    return float(out) if np.ndim(out) == 0 else out


def added_variance(p: np.ndarray, deltas: np.ndarray, h: float, weights: np.ndarray) -> np.ndarray:
    """``h^2 sum_n w_n sum_l delta_{n,l}^2 (1 / p_{n,l} - 1)``: the variance the Bernoulli draws add.

    p: (G, M, L - 1) probabilities; deltas: (M, L - 1) RMS drift differences (state units per unit time; 0
    terms contribute 0 whatever p); h: the step (time); weights: (M,).  Returns (G,), state units squared.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(deltas[None] > 0, deltas[None] ** 2 * (1.0 / p - 1.0), 0.0)
    return h**2 * (per.sum(2) @ weights)


# ----------------------------------------------------------------------------- the search for mu


def search_threshold(
    ok: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, *, smallest: bool, points: int = 17, rounds: int = 4
) -> float:
    """Where a monotone condition flips on [lo, hi], by ``rounds`` refinements of a grid of ``points``.

    ``ok`` maps an array of values to booleans and must be True above (``smallest``) or below a threshold.
    Returns the smallest (largest) grid value found with ``ok`` True: ``lo`` (``hi``) when it is already
    True there; for the largest, ``lo`` when ``ok`` is False everywhere.  With ``points=3`` each round
    halves the bracket (a bisection: ``rounds`` of about 100 reach float precision).
    """
    for _ in range(rounds):
        grid = np.linspace(lo, hi, points)
        good = ok(grid)
        if smallest:
            if good[0]:
                return float(grid[0])
            i = int(np.argmax(good))  # the first good point; the last one is good
            lo, hi = grid[i - 1], grid[i]
        else:
            if good[-1]:
                return float(grid[-1])
            i = int(np.argmin(good))  # the first bad point
            if i == 0:
                return float(grid[0])
            lo, hi = grid[i - 1], grid[i]
    return float(hi if smallest else lo)


def search_mu(
    ok: Callable[[np.ndarray], np.ndarray], rh: np.ndarray, *, smallest: bool, precise: bool = False
) -> float:
    """The smallest (or largest) rate scale mu with ``ok(mu)`` True, searched in log mu.

    ``ok`` maps an array of mu to booleans (monotone, see :func:`search_threshold`).  rh: rate per unit mu
    times the step, (M, L - 1); the range ends where every p = min(1, mu rh) reaches 1 (beyond it nothing
    changes) and starts 20 decades below the first p = 1.  ``precise``: bisect to float precision
    (100 halvings) instead of 4 refinements of a 17-point grid (about 1e-3 relative in mu: what plans use).
    Returns 0.0 when every rh is 0 (the rates do not matter).
    """
    if not np.any(rh > 0):
        return 0.0
    hi = math.log(1.0 / float(rh[rh > 0].min()))
    lo = math.log(1.0 / float(rh.max())) - 46.0
    points, rounds = (3, 100) if precise else (17, 4)
    return math.exp(search_threshold(lambda v: ok(np.exp(v)), lo, hi, smallest=smallest, points=points, rounds=rounds))


def closed_form_probabilities(
    rh: np.ndarray,
    costs: Sequence[float],
    budget: float,
    *,
    floor: Optional[np.ndarray] = None,
    weights: Optional[np.ndarray] = None,
    precise: bool = False,
):
    """The per-call closed form sized to a budget: p = min(1, max(floor, mu rh)) at the largest mu whose
    :func:`expected_cost` is at most ``budget``.

    rh: (N, L - 1) rate shape per unit mu times each call's span (e.g. delta_l(t_n) span_n / sqrt(C_l));
    costs: (L,) and ``budget`` in one unit per sample; floor: optional (N, L - 1) smallest probabilities;
    weights: as for :func:`expected_cost`; precise: as for :func:`search_mu`.  Returns ``(mu, p)`` with p
    of shape (N, L - 1).  The caller checks that the budget pays the base level (else mu is ~0).
    """

    def probabilities(mu):
        mu = np.asarray(mu, dtype=float)[..., None, None]
        return firing_probability(mu * rh if floor is None else np.maximum(floor, mu * rh), 1.0)

    mu = search_mu(
        lambda m: expected_cost(probabilities(m), costs, weights) <= budget, rh, smallest=False, precise=precise
    )
    return mu, probabilities(mu)


# ----------------------------------------------------------------------------- rate shapes and rules


@dataclass
class RateShape:
    """A rate shape per call: p_{n,l} = min(1, max(floor_{n,l}, mu shape_{n,l} h_n / sqrt(C_l))).

    times, spans: (N,) the calls' t and span; values: (N, K - 1) shape_l(t_n) in state units per unit time
    (delta for the closed form, s delta for sensitivity weighting); kind: the rule's name; floor: None or
    (N, K - 1) smallest probabilities.
    """

    times: np.ndarray
    spans: np.ndarray
    values: np.ndarray
    kind: str = "closed"
    floor: Optional[np.ndarray] = None

    def _rh(self, costs: Sequence[float]) -> np.ndarray:
        c = np.asarray(costs, dtype=float) / float(costs[-1])
        C = c[1:] + c[:-1]
        return self.values * self.spans[:, None] / np.sqrt(C)[None]

    def probabilities(self, costs: Sequence[float], budget: float) -> np.ndarray:
        """p (N, K - 1) at the mu whose expected cost is ``budget`` top-level equivalents per sample.

        costs: (K,) the levels' costs (any unit; normalised by the top's).  Raises ValueError when the budget
        is below the base level's cost (no mu reaches it) or the floor's; a budget above the all-levels cost
        gives p = 1 everywhere.
        """
        rh = self._rh(costs)
        c = np.asarray(costs, dtype=float) / float(costs[-1])
        base = c[0] * len(self.times)
        if not budget > base:
            raise ValueError(
                f"budget: expected more than the base level's cost {base:.4g} top-level equivalents "
                f"per sample on {len(self.times)} calls, got {budget!r}"
            )
        full = expected_cost(np.ones_like(rh), c)
        if budget >= full or not np.any(rh > 0):
            return np.ones_like(rh)
        if self.floor is not None:
            at_floor = expected_cost(firing_probability(self.floor, 1.0), c)
            if at_floor > budget:
                raise ValueError(
                    f"budget: {budget:.4g} top-level equivalents per sample is below the cost of this "
                    f"shape's floor ({at_floor:.4g})"
                )
        return closed_form_probabilities(rh, c, budget, floor=self.floor, precise=True)[1]


#: The rate rules, by name: what each makes the rates follow.
RATE_RULES = {
    "closed": "lambda_l(t) = mu delta_l(t) / sqrt(C_l): the closed form (docs/method.md, 'Choosing the rates')",
    "sensitivity": "lambda_l(t) = mu s_l(t) delta_l(t) / sqrt(C_l): delta weighted by how much of a perturbation "
    "at t survives to the end of the sampler (measured), with p floored so a fired correction's "
    "kick stays below max_kick times the state's RMS norm",
    "learned": "probabilities learned by stochastic gradient descent through the sampler at a fixed expected cost "
    "(multilevel_em.diffusion.learn_probabilities, started from the closed form)",
}


def rate_shape(
    rule: str,
    times: np.ndarray,
    spans: np.ndarray,
    deltas: np.ndarray,
    *,
    sensitivity: Optional[np.ndarray] = None,
    state_rms: Optional[np.ndarray] = None,
    max_kick: float = 1.0,
) -> RateShape:
    """The :class:`RateShape` of the rule named ``rule`` (:data:`RATE_RULES`) on a sampler's calls.

    times, spans: (N,); deltas: (N, K - 1) RMS drift differences per call (state units per unit time);
    "sensitivity" also needs ``sensitivity`` s_l(t_n), (N, K - 1), and ``state_rms`` (N,) (state units).
    "learned" has no closed shape: it runs the sampler (:func:`multilevel_em.diffusion.learn_probabilities`).
    """
    if rule == "closed":
        return RateShape(times, spans, deltas, rule)
    if rule == "sensitivity":
        if sensitivity is None or state_rms is None:
            raise ValueError("rule 'sensitivity': needs sensitivity= and state_rms= (measure_profiles measures them)")
        # Floor: a fired correction moves the state by (1 / p) h delta; keep that below the state's own
        # RMS norm, where the first-order analysis (and the networks' training data) still hold.
        floor = spans[:, None] * deltas / (max_kick * state_rms[:, None])
        return RateShape(times, spans, deltas * sensitivity, rule, floor)
    if rule == "learned":
        raise ValueError(
            "rule 'learned': learned probabilities have no closed shape; run "
            "multilevel_em.diffusion.learn_probabilities (it runs the sampler)"
        )
    raise ValueError(f"rule: expected one of {', '.join(map(repr, RATE_RULES))}, got {rule!r}")
