"""The measured ladder as data: closed-form rates, cost/variance predictions and plans.

A :class:`Calibration` holds what :func:`~multilevel_em.calibrate` measured (costs, the
pairwise RMS differences of the levels at a few times, errors, gamma, the EM step-error
coefficient and the top level's bias) and derives everything else from it:

* :meth:`Calibration.rates`: lambda_l(t) = mu delta_l(t) / sqrt(C_l), C_l = c_l + c_{l-1},
  piecewise linear between the measured times (docs/method.md, "Choosing the rates");
* :meth:`Calibration.predict`: the expected cost per sample of ML-EM with those rates on a
  uniform grid, its per-sample spread, and the added variance of the randomization;
* :meth:`Calibration.plan`: the rate scale mu, the step count and the levels to keep for a
  target error or a budget, compared with EM with the top level.

Units: costs are in ``Calibration.cost_unit`` (seconds, FLOPs or the ladder's units, per
sample); "top-level equivalents" divide by the top level's cost; ``ladder_cost`` uses the
ladder's own costs, the units of :attr:`Solution.cost <multilevel_em.Solution.cost>`.
Errors are RMS over samples of Euclidean norms, in the state's units.

The error model used by :meth:`Calibration.plan` (an approximation, read it)::

    error^2 = bias^2 + (a h)^2 + V(mu, h),   V = sum_n h^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)

``bias``: the top level's pathwise error against the reference (0 when the top level is the
reference); ``a h``: the strong error of EM with the top level at step h (order 1);
``V``: the variance the Bernoulli draws add to the state at t1, summing the per-step
variances of h (B / p - 1) (f^l - f^{l-1}) as if they were independent and did not
propagate through the dynamics (contracting dynamics damp them, expanding ones amplify
them). The three terms are treated as independent.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .._io import write_json
from .samplers import SamplerFit

__all__ = ["CallPlan", "Calibration", "Plan", "Prediction", "PiecewiseLinearRate"]

FORMAT = "multilevel_em.Calibration"
FORMAT_VERSION = 1

#: Above this many steps, plan() sums the per-step terms over this many evenly spread
#: steps (each standing for steps / _PLAN_POINTS of them): delta_l(t) is piecewise linear
#: between a few measured times, so the sums change by far less than the model's own error.
_PLAN_POINTS = 512


class PiecewiseLinearRate:
    """A rate lambda(t) per unit time, piecewise linear through ``(times[i], values[i])``.

    Constant outside [times[0], times[-1]]. A plain picklable callable ``float -> float``,
    as :func:`~multilevel_em.solve` expects in ``rates``.
    """

    def __init__(self, times: Sequence[float], values: Sequence[float]):
        self.times = np.asarray(times, dtype=np.float64)
        self.values = np.asarray(values, dtype=np.float64)

    def __call__(self, t) -> float:
        return float(np.interp(float(t), self.times, self.values))

    def __repr__(self) -> str:
        return f"PiecewiseLinearRate({len(self.times)} knots, {self.values.min():.4g}..{self.values.max():.4g})"


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


@dataclass
class Plan:
    """What :meth:`Calibration.plan` chose, and what it predicts.

    Use it as ``solve(plan.select(ladder), x0, t0=..., t1=..., steps=plan.steps,
    rates=plan.rates, method="mlem", ...)``.

    Attributes:
        levels: kept levels, 0-based (``Ladder.select`` indices), always with the top level.
        names: their names.
        dropped: the levels left out, 0-based.
        mu, steps: rate scale and uniform step count.
        rates: the rates for the kept levels' corrections (callables of t).
        target, budget: what was asked (one of them is None).
        error: predicted RMS pathwise error at t1, ``sqrt(bias^2 + step_error^2 + randomization^2)``.
        bias, step_error, randomization: its three parts (``a h`` and ``sqrt(V)``; inside a measured
            ``sampler``: its measured step error at ``steps`` and ``sqrt(gain V)``).
        cost, top_equivalents, ladder_cost: predicted ML-EM cost per sample (calibration
            unit, top-level equivalents, ladder units).
        em_steps, em_cost, em_top_equivalents: EM with the top level reaching ``error``
            (predicted by EM's measured curve in :attr:`Calibration.samplers` when there is one, else by
            ``a h``; without randomization).
        speedup: ``em_cost / cost``; for a plan inside a measured ``sampler``:
            ``best_single["top_equivalents"] / top_equivalents``.
        helps: ``speedup > 1``.
        message: a sentence saying the above, for humans (levels numbered from 1 there).
        prediction: the full :class:`Prediction` of the chosen configuration.
        sampler: the sampler planned for (None: the EM model above).
        same_sampler: the top level alone with ``sampler`` at ML-EM's cost: ``{"sampler", "steps",
            "top_equivalents", "error"}`` (``steps = floor(top_equivalents)``).
        best_single: the cheapest single-model run among the calibration's measured samplers that
            reaches ``error`` (same keys); None if none does within ``max_steps``.
        best_at_budget: the smallest predicted error of a single-model run among the measured
            samplers at ML-EM's cost (same keys).
    """

    levels: Tuple[int, ...]
    names: Tuple[str, ...]
    dropped: Tuple[int, ...]
    mu: float
    steps: int
    rates: list = field(repr=False)
    target: Optional[float]
    budget: Optional[float]
    error: float
    bias: float
    step_error: float
    randomization: float
    cost: float
    top_equivalents: float
    ladder_cost: float
    em_steps: int
    em_cost: float
    em_top_equivalents: float
    speedup: float
    helps: bool
    message: str
    prediction: Prediction = field(repr=False)
    sampler: Optional[str] = None
    same_sampler: Optional[dict] = None
    best_single: Optional[dict] = None
    best_at_budget: Optional[dict] = None

    def select(self, ladder):
        """The sub-ladder of ``ladder`` with the kept levels (``ladder.select(self.levels)``)."""
        if len(ladder) != len(self.levels) + len(self.dropped):
            raise ValueError(
                f"ladder: the plan is for a ladder of {len(self.levels) + len(self.dropped)} levels, got {len(ladder)}"
            )
        return ladder.select(list(self.levels))

    def to_dict(self) -> dict:
        """Plain data (the rates as their values at the calibration times are left out)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("rates", "prediction")}
        d["prediction"] = self.prediction.to_dict()
        return d


@dataclass
class CallPlan:
    """What :meth:`Calibration.plan_calls` chose for a fixed grid of model calls (a sampler's).

    Attributes:
        levels, names: kept levels (0-based) and their names; all levels, the top included.
        mu: rate scale of :meth:`Calibration.rates`.
        rates: the closed-form rates lambda_l(t) for those levels (callables of t).
        probabilities: p_{n,l} = min(1, lambda_l(t_n) span_n) per call, shape (calls, L - 1).
        budget: the budget asked, top-level equivalents per sample.
        calls: the number of model calls of the grid.
        top_equivalents: predicted expected cost per sample, top-level equivalents (the top
            model alone at every call costs ``calls``).
        evaluations: expected evaluations of each kept level per sample.
        added_variance: ``sum_n span_n^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1)``, the variance
            the draws add to the time integral of the model output (output units x time
            squared), before the sampler's own weighting of each call.
        message: a sentence saying the above.
    """

    levels: Tuple[int, ...]
    names: Tuple[str, ...]
    mu: float
    rates: list = field(repr=False)
    probabilities: np.ndarray = field(repr=False)
    budget: float
    calls: int
    top_equivalents: float
    evaluations: Tuple[float, ...]
    added_variance: float
    message: str

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("rates", "probabilities")}
        d["probabilities"] = self.probabilities.tolist()
        return d


@dataclass(eq=False)
class Calibration:
    """What :func:`~multilevel_em.calibrate` measured on a ladder of K levels at T times.

    Attributes:
        t0, t1: the time interval.
        times: calibration times, shape (T,).
        names: level names, K of them.
        costs: cost of one evaluation per sample, shape (K,), in ``cost_unit``.
        ladder_costs: the ladder's declared costs, shape (K,).
        timing: how ``costs`` were obtained: "wall", "flops" or "given".
        cost_unit: the unit of ``costs``.
        pairwise: ``pairwise[i, l, j] = sqrt(mean_b ||f^l - f^j||^2)`` at ``times[i]`` over the
            calibration states, shape (T, K, K), symmetric, 0-based levels; delta_l(t_i) is
            ``pairwise[i, l, l - 1]``.
        errors_t: RMS error of each level against the reference at each time, shape (T, K).
        reference: "given" (a true drift) or "top" (the top level).
        n_states: states per time.
        gamma, gamma_se: fitted cost exponent and its standard error (None if not fitted;
            gamma_se is nan with 2 fitted levels).
        fit_levels: 0-based levels used in the fit.
        step_error: a, the EM step-error coefficient (error of EM with the top level ~ a h,
            state units per unit time), or None if not measured.
        step_error_steps, step_error_refine: N and m of the EM runs with N and m N steps
            that measured it.
        top_bias: pathwise RMS error at t1 of the top level against the reference (0 when
            the reference is the top level), or None if not measured.
        top_bias_source: how ``top_bias`` was obtained.
        samplers: measured step-error curves of samplers, ``{name: SamplerFit}``
            (:mod:`multilevel_em.calibration.samplers`), used by ``plan(..., sampler=name)``;
            empty unless measured (e.g. ``MultilevelPipeline.calibrate_samplers``).
    """

    t0: float
    t1: float
    times: np.ndarray
    names: Tuple[str, ...]
    costs: np.ndarray
    ladder_costs: np.ndarray
    timing: str
    cost_unit: str
    pairwise: np.ndarray
    errors_t: np.ndarray
    reference: str
    n_states: int
    gamma: Optional[float] = None
    gamma_se: Optional[float] = None
    fit_levels: Tuple[int, ...] = ()
    step_error: Optional[float] = None
    step_error_steps: Optional[int] = None
    step_error_refine: Optional[int] = None
    top_bias: Optional[float] = None
    top_bias_source: str = "none"
    samplers: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ derived quantities

    @property
    def n_levels(self) -> int:
        return len(self.names)

    @property
    def deltas(self) -> np.ndarray:
        """delta_l(t_i) for l = 2..K, shape (T, K-1): ``deltas[i, l - 2] = rms(f^l - f^{l-1})``."""
        K = self.n_levels
        return self.pairwise[:, np.arange(1, K), np.arange(0, K - 1)]

    @property
    def errors(self) -> np.ndarray:
        """RMS error of each level against the reference over all states and times, shape (K,)."""
        return np.sqrt((self.errors_t**2).mean(0))

    def _levels(self, levels: Optional[Sequence[int]]) -> Tuple[int, ...]:
        K = self.n_levels
        if levels is None:
            return tuple(range(K))
        try:
            idx = sorted({range(K)[int(i)] for i in levels})
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"levels: expected 0-based level indices in [0, {K - 1}], got {levels!r}") from None
        if len(idx) < 2:
            raise ValueError(f"levels: ML-EM needs at least 2 levels, got {idx}")
        return tuple(idx)

    def _corrections(self, levels: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
        """delta of each correction of the sub-ladder at the measured times, (T, L-1), and C, (L-1,)."""
        lv = np.asarray(levels)
        delta = self.pairwise[:, lv[1:], lv[:-1]]
        C = self.costs[lv[1:]] + self.costs[lv[:-1]]
        return delta, C

    def _delta_rms_in_time(self, delta: np.ndarray) -> np.ndarray:
        """sqrt of the time average over [t0, t1] of delta(t)^2 (the interpolant), per column."""
        ts = np.linspace(self.t0, self.t1, 4097)
        sq = np.stack([np.interp(ts, self.times, delta[:, c]) ** 2 for c in range(delta.shape[1])], 1)
        mean_sq = ((sq[1:] + sq[:-1]) / 2).mean(0)  # trapezoid rule on a uniform grid
        return np.sqrt(mean_sq)

    # ------------------------------------------------------------------ rates

    def rates(self, mu: float, levels: Optional[Sequence[int]] = None) -> List[PiecewiseLinearRate]:
        """Closed-form time-dependent rates lambda_l(t) = mu delta_l(t) / sqrt(C_l).

        Args:
            mu: the scale trading cost for accuracy (rates per unit time are proportional to it).
            levels: optional 0-based levels of a sub-ladder (default all); delta and C are then
                those of consecutive kept levels.

        Returns:
            ``len(levels) - 1`` callables of t (piecewise linear between the calibration
            times, constant outside), ready for ``solve(..., rates=...)``.
        """
        mu = _check_mu(mu)
        delta, C = self._corrections(self._levels(levels))
        return [PiecewiseLinearRate(self.times, mu * delta[:, c] / math.sqrt(C[c])) for c in range(len(C))]

    def uniform_rates(self, mu: float, levels: Optional[Sequence[int]] = None) -> List[float]:
        """Constant rates lambda_l = mu delta_l_bar / sqrt(C_l), for comparisons.

        ``delta_l_bar`` is the root of the time average of delta_l(t)^2 over [t0, t1] (the
        best constant allocation: for constant rates the added variance involves the
        integral of delta_l^2).
        """
        mu = _check_mu(mu)
        delta, C = self._corrections(self._levels(levels))
        bar = self._delta_rms_in_time(delta)
        return [float(mu * bar[c] / math.sqrt(C[c])) for c in range(len(C))]

    # ------------------------------------------------------------------ predictions

    def _grid(self, steps: int, max_points: Optional[int]) -> Tuple[np.ndarray, np.ndarray, float]:
        """Step start times t_n, (M,), their weights (how many steps each stands for), and h."""
        h = (self.t1 - self.t0) / steps
        if max_points is None or steps <= max_points:
            n = np.arange(steps)
            w = np.ones(steps)
        else:
            n = np.floor((np.arange(max_points) + 0.5) * steps / max_points)
            w = np.full(max_points, steps / max_points)
        return self.t0 + n * h, w, h

    def _profile(self, levels, steps, uniform, max_points=None):
        """Per-step quantities for a sub-ladder: delta (M, L-1), rate per mu (M, L-1), weights, h."""
        delta, C = self._corrections(levels)
        ts, w, h = self._grid(steps, max_points)
        if uniform:
            d_rate = np.broadcast_to(self._delta_rms_in_time(delta), (len(ts), len(C)))
        else:
            d_rate = np.stack([np.interp(ts, self.times, delta[:, c]) for c in range(len(C))], 1)
        d_true = np.stack([np.interp(ts, self.times, delta[:, c]) for c in range(len(C))], 1)
        return d_true, d_rate / np.sqrt(C), w, h

    def _stats(self, levels, mus: np.ndarray, d_true, rate_per_mu, w, h, costs=None):
        """Vectorised over ``mus`` (G,): expected evaluations (G, L), cost mean and variance
        per sample (G,), and added variance (G,)."""
        costs = self.costs if costs is None else costs
        c = costs[np.asarray(levels)]  # (L,)
        p = np.minimum(1.0, mus[:, None, None] * rate_per_mu[None] * h)  # (G, M, L-1)
        q = 1.0 - p
        G, M, L1 = p.shape
        ones = np.ones((G, M, 1))
        # u[..., i]: probability that level i of the sub-ladder is NOT needed on a step;
        # level 0 always is, level i >= 1 unless neither correction i nor i + 1 fires.
        q_next = np.concatenate([q[:, :, 1:], ones], 2)  # correction i + 1 (none above the top)
        u = np.concatenate([np.zeros((G, M, 1)), q * q_next], 2)  # (G, M, L)
        evaluations = ((1.0 - u) * w[None, :, None]).sum(1)  # (G, L)
        mean = evaluations @ c
        # Per-step variance of sum_i c_i N_i, N_i = 1{level i needed}; neighbours share a draw.
        var_step = (c**2 * u * (1 - u)).sum(2)
        if L1 >= 2:
            # P(N_i = 0 and N_{i+1} = 0) = q_i q_{i+1} q_{i+2} for i >= 1 (q_L = 1).
            both0 = q[:, :, :-1] * q[:, :, 1:] * q_next[:, :, 1:]
            cov = both0 - u[:, :, 1:-1] * u[:, :, 2:]
            var_step = var_step + 2 * (c[1:-1] * c[2:] * cov).sum(2)
        var = (var_step * w[None]).sum(1)
        return evaluations, mean, var, _added_variance(mus, d_true, rate_per_mu, w, h)

    def predict(
        self, mu: float, steps: int, *, levels: Optional[Sequence[int]] = None, uniform: bool = False
    ) -> Prediction:
        """Expected cost and added variance per sample of ML-EM with ``rates(mu)``.

        On the uniform grid t_n = t0 + n h, h = (t1 - t0) / steps, with p_{n,l} =
        min(1, lambda_l(t_n) h) and the cost-sharing rule of :func:`~multilevel_em.solve`
        (level 1 every step; level j >= 2 when B_j or B_{j+1} fires): expected cost per step
        ``c_1 + sum_{j>=2} c_j (1 - (1 - p_j)(1 - p_{j+1}))``, p_{K+1} = 0.  Above 512 steps the
        sums run over 512 evenly spread steps, each weighted by ``steps / 512`` (as in :meth:`plan`):
        bounded time at any step count.

        Args:
            mu: the rate scale of :meth:`rates` (or of :meth:`uniform_rates` with ``uniform=True``).
            steps: the number of uniform steps.
            levels: optional 0-based sub-ladder (default all levels).
            uniform: predict for :meth:`uniform_rates` instead.

        Returns:
            A :class:`Prediction`.
        """
        mu = _check_mu(mu)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        lv = self._levels(levels)
        # The same bounded grid as plan(): above _PLAN_POINTS steps, evenly spread steps stand for the
        # rest, so a prediction for 10**9 steps takes as long as one for 512 (and agrees with the plan).
        d_true, rpm, w, h = self._profile(lv, steps, uniform, _PLAN_POINTS)
        mus = np.array([mu])
        ev, mean, var, added = self._stats(lv, mus, d_true, rpm, w, h)
        _, l_mean, l_var, _ = self._stats(lv, mus, d_true, rpm, w, h, costs=self.ladder_costs)
        return Prediction(
            mu=mu,
            steps=steps,
            levels=lv,
            uniform=bool(uniform),
            evaluations=tuple(float(e) for e in ev[0]),
            cost=float(mean[0]),
            cost_sd=float(math.sqrt(max(var[0], 0.0))),
            top_equivalents=float(mean[0] / self.costs[-1]),
            ladder_cost=float(l_mean[0]),
            ladder_cost_sd=float(math.sqrt(max(l_var[0], 0.0))),
            added_variance=float(added[0]),
        )

    # ------------------------------------------------------------------ planning

    def plan(
        self,
        target: Optional[float] = None,
        *,
        budget: Optional[float] = None,
        steps: Optional[int] = None,
        max_steps: int = 2**16,
        sampler: Optional[str] = None,
    ) -> Plan:
        """Choose mu, the step count and the levels to keep, for a target error or a budget.

        Error model (module docstring): ``error^2 = bias^2 + (a h)^2 + V(mu, h)``.

        * ``target`` (an RMS pathwise error at t1, state units): for every sub-ladder that
          keeps the top level (all 2^(K-1) of them: a level that does not pay for itself
          is dropped) and every step count (geometric, ratio sqrt(2), from the fewest whose
          step error leaves room for V, or exactly ``steps``), the smallest mu with
          ``V(mu) <= target^2 - bias^2 - (a h)^2``; keeps the cheapest. EM with the top level
          is sized by ``bias^2 + (a h)^2 <= target^2``. For one sub-ladder the step counts
          stop once 3 in a row bring no gain, or when its base level alone costs more than
          the best plan so far. 2^(K-1) sub-ladders: meant for ladders of up to ~12 levels.
        * ``budget`` (cost per sample in top-level equivalents): the same search, taking the
          largest mu whose expected cost fits the budget and keeping the smallest predicted
          error; EM is then sized to reach that error.

        Args:
            target: RMS pathwise error to reach; give it or ``budget``.
            budget: cost per sample in top-level equivalents (``cost_unit`` / top cost).
            steps: fix the step count instead of searching (an int >= 1).
            max_steps: largest step count searched.
            sampler: plan ML-EM inside this measured sampler (a key of :attr:`samplers`): its
                measured step-error curve replaces ``a h`` and its measured gain scales ``V``
                (:mod:`multilevel_em.calibration.samplers`); the plan is then compared with the
                top level alone in the same sampler at the same cost and with the cheapest
                single-model run of any measured sampler reaching the same error, and
                ``helps`` / ``message`` come from that comparison. None: the EM model.

        Returns:
            A :class:`Plan`; ``plan.helps`` is False (and ``plan.message`` says so) when
            ML-EM is not predicted to beat EM with the top level (or, with ``sampler``, the
            cheapest single-model run reaching the same error).

        Raises:
            ValueError: the target is at or below the top level's own bias (unreachable with
                this ladder; the message gives both numbers), the step error at ``steps`` alone
                exceeds the target, the budget cannot pay one step of the cheapest level, or
                the calibration has no step-error/bias measurement (calibrate with ``x``).
        """
        if (target is None) == (budget is None):
            raise ValueError("plan: give exactly one of target= (an RMS error) or budget= (top-level equivalents)")
        fit = self.sampler_fit(sampler) if sampler is not None else None
        if (fit is None and self.step_error is None) or self.top_bias is None:
            raise ValueError(
                "plan: this calibration has no step-error measurement (it was run without x or with "
                "step_error=False); calibrate with the initial states x to plan"
            )
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps: expected an int >= 1 or None, got {steps!r}")
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps: expected an int >= 1, got {max_steps!r}")
        K = self.n_levels
        b = float(self.top_bias)
        step_err = self._step_error_model(fit)
        gain = (lambda n: 1.0) if fit is None else fit.gain_at
        c_top = float(self.costs[-1])
        subsets = [(*mid, K - 1) for r in range(K - 1) for mid in combinations(range(K - 1), r + 1)]

        if target is not None:
            target = _check_positive("target", target)
            if target <= b:
                raise ValueError(
                    f"target {target:.4g} is unreachable: the top level's own pathwise bias is {b:.4g} "
                    f"({self.top_bias_source}), {b - target:.4g} above the target ({b / target:.3g}x); "
                    f"no rates or step count remove it. Ask for a target above {b:.4g} or add a better top level"
                )
            room = target**2 - b**2
            n_min = self._fewest_steps(step_err, fit, room, max_steps)
            if steps is not None:
                if step_err(steps) ** 2 >= room:
                    raise ValueError(
                        f"steps={steps}: the step error alone, {step_err(steps):.4g}, leaves no room under "
                        f"target {target:.4g} (bias {b:.4g}); use steps >= {n_min}"
                    )
                step_grid = [steps]
            else:
                step_grid = _geometric_steps(n_min, max(max_steps, n_min))
            best = None
            for lv in subsets:
                c = self.costs[np.asarray(lv)]
                stalled, sub_best = 0, math.inf
                for n in step_grid:
                    if best is not None and n * c[0] >= best[0]:
                        break  # the base level alone costs more than the best plan so far
                    d_true, rpm, w, h = self._profile(lv, n, False, _PLAN_POINTS)
                    v_room = room - step_err(n) ** 2
                    fits = lambda m: gain(n) * _added_variance(m, d_true, rpm, w, h) <= v_room  # noqa: E731
                    mu = _search_mu(fits, rpm * h, smallest=True)
                    cost = float(_mean_cost(np.array([mu]), rpm, w, h, c)[0])
                    if best is None or cost < best[0]:
                        best = (cost, lv, n, mu)
                    # Cost against steps falls, then flattens or rises: stop after 3 steps without gain.
                    stalled = stalled + 1 if cost > sub_best * (1 - 1e-3) else 0
                    sub_best = min(sub_best, cost)
                    if stalled >= 3:
                        break
            _, lv, n, mu = best
        else:
            budget = _check_positive("budget", budget)
            limit = budget * c_top
            c_min = float(self.costs.min())
            if limit < c_min:
                raise ValueError(
                    f"budget {budget:.4g} top-level equivalents is too small: one step of the cheapest level alone "
                    f"costs {c_min / c_top:.4g} top-level equivalents"
                )
            best = None
            for lv in subsets:
                c = self.costs[np.asarray(lv)]
                n_max = int(math.floor(limit / c[0] * (1 + 1e-12)))
                if steps is not None:
                    grid = [steps] if steps <= n_max else []
                else:
                    grid = _geometric_steps(1, min(n_max, max_steps)) if n_max >= 1 else []
                stalled, sub_best = 0, math.inf
                for n in grid:
                    d_true, rpm, w, h = self._profile(lv, n, False, _PLAN_POINTS)
                    affordable = lambda m: _mean_cost(m, rpm, w, h, c) <= limit  # noqa: E731
                    mu = _search_mu(affordable, rpm * h, smallest=False)
                    err2 = b**2 + step_err(n) ** 2 + gain(n) * float(_added_variance(np.array([mu]), d_true, rpm, w, h)[0])
                    if best is None or err2 < best[0]:
                        best = (err2, lv, n, mu)
                    stalled = stalled + 1 if err2 > sub_best * (1 - 1e-3) else 0
                    sub_best = min(sub_best, err2)
                    if stalled >= 3:
                        break
            if best is None:
                raise ValueError(
                    f"budget {budget:.4g} top-level equivalents cannot pay steps={steps} of any level that can "
                    f"serve as the base of a sub-ladder (the cheapest costs {c_min / c_top:.4g} per step)"
                )
            _, lv, n, mu = best
        return self._make_plan(lv, n, mu, target, budget, fit)

    def sampler_fit(self, sampler: str) -> SamplerFit:
        """The measured :class:`SamplerFit` of ``sampler``; ValueError naming it (and how to measure it) if absent."""
        if sampler not in self.samplers:
            have = ", ".join(sorted(self.samplers)) or "none"
            raise ValueError(
                f"sampler {sampler!r}: this calibration has not measured it (measured: {have}); measure it with "
                f"MultilevelPipeline.calibrate_samplers(samplers=[{sampler!r}]) or "
                f"`mlem calibrate --ladder DIR --samplers {sampler}`"
            )
        return self.samplers[sampler]

    def _step_error_model(self, fit: Optional[SamplerFit]):
        """steps -> predicted step error of the top level alone: ``a h`` (EM) or the sampler's measured curve."""
        if fit is not None:
            return fit.error
        a, T = float(self.step_error), self.t1 - self.t0
        return lambda n: a * T / n

    def _fewest_steps(self, step_err, fit, room: float, max_steps: int) -> int:
        """The fewest steps whose step error squared is below ``room`` (ValueError if none within max_steps)."""
        if fit is None:
            return math.floor(float(self.step_error) * (self.t1 - self.t0) / math.sqrt(room)) + 1
        n = fit.steps_for(math.sqrt(room) * (1 - 1e-9), max_steps)
        if n is None:
            raise ValueError(
                f"target: the top level alone with {fit.sampler} does not reach error {math.sqrt(room):.4g} (above "
                f"the bias) within max_steps={max_steps} steps (predicted {step_err(max_steps):.4g} there)"
            )
        return n

    def plan_calls(self, budget: float, times: Sequence[float], spans: Sequence[float], *,
                   levels: Optional[Sequence[int]] = None) -> CallPlan:
        """Closed-form rates sized to ``budget`` for a sampler whose model calls are fixed.

        Where :meth:`plan` chooses the step count of a uniform EM grid, this takes the calls a
        sampler makes (a diffusers scheduler's timesteps): call n at time ``times[n]`` with
        probabilities p_{n,l} = min(1, lambda_l(t_n) ``spans[n]``), lambda = :meth:`rates`
        (mu), and picks the largest mu whose expected cost (the cost-sharing rule of
        :meth:`predict`) fits ``budget`` top-level equivalents per sample.

        Args:
            budget: top-level equivalents per sample, at least one call of the cheapest kept
                level per call; a budget of ``len(times)`` or more pays the top level at every
                call (then every p is 1 and ML-EM is the top model).
            times: the calls' times, in the calibration's time variable, shape (calls,).
            spans: the time each call stands for (> 0), shape (calls,).
            levels: optional 0-based sub-ladder (with the top level), default all.

        Returns:
            A :class:`CallPlan`.
        """
        budget = _check_positive("budget", budget)
        ts = np.asarray(times, dtype=np.float64).reshape(-1)
        span = np.asarray(spans, dtype=np.float64).reshape(-1)
        if ts.size == 0 or ts.shape != span.shape:
            raise ValueError(f"times, spans: expected two equal-length non-empty sequences, got {ts.size} and {span.size}")
        if not (np.all(np.isfinite(ts)) and np.all(np.isfinite(span)) and np.all(span > 0)):
            raise ValueError("times, spans: expected finite times and spans > 0")
        lv = self._levels(levels)
        delta, C = self._corrections(lv)
        # Per call: delta_l(t_n) span_n (the correction's size integrated over the call's span) and
        # p_{n,l} / mu; the uniform-grid helpers then apply with h = 1.
        d_true = np.stack([np.interp(ts, self.times, delta[:, k]) for k in range(len(C))], 1) * span[:, None]
        rpm = d_true / np.sqrt(C)
        c = self.costs[np.asarray(lv)]
        c_top = float(self.costs[-1])
        calls = len(ts)
        base = calls * float(c[0]) / c_top
        if budget < base * (1 - 1e-12):
            raise ValueError(
                f"budget {budget:.4g} top-level equivalents per sample is too small: the cheapest kept level "
                f"({self.names[lv[0]]}) at each of the {calls} calls alone costs {base:.4g}"
            )
        w = np.ones(calls)
        mu = _search_mu(lambda m: _mean_cost(m, rpm, w, 1.0, c) <= budget * c_top, rpm, smallest=False)
        mus = np.array([mu])
        evaluations, mean, _, added = self._stats(lv, mus, d_true, rpm, w, 1.0)
        added = float(added[0])
        p = np.minimum(1.0, mu * rpm)
        te = float(mean[0] / c_top)
        if np.all(p >= 1.0):
            message = (
                f"budget {budget:.4g} pays the top level at every one of the {calls} calls ({te:.4g} top-level "
                "equivalents per sample): every probability is 1, so this is the top model alone; nothing is saved"
            )
        else:
            message = (
                f"levels {', '.join(str(l + 1) for l in lv)}, mu={mu:.4g}: predicted {te:.4g} top-level equivalents "
                f"per sample for {calls} calls (the top model at every call: {calls}); the estimate stays unbiased "
                "for the top model at each call, at an added variance this plan minimises for its cost. Whether it "
                "beats the top model with fewer steps at the same cost is not predicted here: compare both"
            )
        return CallPlan(levels=lv, names=tuple(self.names[l] for l in lv), mu=mu, rates=self.rates(mu, levels=lv),
                        probabilities=p, budget=budget, calls=calls, top_equivalents=te,
                        evaluations=tuple(float(e) for e in evaluations[0]), added_variance=added, message=message)

    def _make_plan(self, lv, n, mu, target, budget, fit: Optional[SamplerFit] = None) -> Plan:
        b, T = float(self.top_bias), self.t1 - self.t0
        c_top = float(self.costs[-1])
        pred = self.predict(mu, n, levels=lv)
        step_err = self._step_error_model(fit)
        gain = 1.0 if fit is None else fit.gain_at(n)
        error = math.sqrt(b**2 + step_err(n) ** 2 + gain * pred.added_variance)
        room = error**2 - b**2
        em_fit = self.samplers.get("em")
        if em_fit is not None:  # EM's own measured curve, where there is one
            em_steps = em_fit.steps_for(math.sqrt(room) * (1 + 1e-9), 2**20) or 2**20
        elif self.step_error is not None:
            a = float(self.step_error)
            em_steps = 1 if a == 0 else max(1, math.ceil(a * T / math.sqrt(room) * (1 - 1e-9)))
        else:  # a sampler plan on a calibration without the EM measurement
            em_steps = 0
        em_cost = em_steps * c_top
        dropped = tuple(l for l in range(self.n_levels) if l not in lv)
        kept = ", ".join(str(l + 1) for l in lv)
        what = f"target {target:.4g}" if target is not None else f"budget {budget:.4g} top-level equivalents"
        extra = {}
        if fit is None:
            speedup = em_cost / pred.cost
            helps = speedup > 1
            em = f"EM with the top level needs {em_steps} steps ({em_cost / c_top:.4g} top-level equivalents)"
            if helps:
                message = (
                    f"ML-EM with levels {kept}, mu={mu:.4g}, steps={n} is predicted to reach RMS error {error:.4g} "
                    f"({what}) for {pred.top_equivalents:.4g} top-level equivalents per sample; {em}: "
                    f"predicted speedup {speedup:.3g}x"
                )
            else:
                message = (
                    f"ML-EM is not predicted to help here ({what}): its best plan (levels {kept}, mu={mu:.4g}, "
                    f"steps={n}) costs {pred.top_equivalents:.4g} top-level equivalents per sample for RMS error "
                    f"{error:.4g}; {em}: speedup {speedup:.3g}x <= 1, use EM"
                )
        else:
            extra = self._single_model_comparison(fit, error, pred.top_equivalents, max(n, 2**16))
            best = extra["best_single"]
            speedup = math.inf if best is None else best["top_equivalents"] / pred.top_equivalents
            helps = speedup > 1
            same, at_budget = extra["same_sampler"], extra["best_at_budget"]
            head = (f"ML-EM inside {fit.sampler} (levels {kept}, mu={mu:.4g}, steps={n}; {what}) is predicted to "
                    f"reach error {error:.4g} for {pred.top_equivalents:.4g} top-level equivalents per sample; the "
                    f"top level alone with {fit.sampler} at that cost ({same['steps']} steps): error "
                    f"{same['error']:.4g}")
            if best is None:
                message = f"{head}; no measured single-model sampler reaches {error:.4g}: predicted to help"
            elif helps:
                message = (f"{head}; the cheapest single-model run reaching {error:.4g} is {best['sampler']} with "
                           f"{best['steps']} steps: predicted speedup {speedup:.3g}x")
            else:
                same_run = (at_budget["sampler"], at_budget["steps"]) == (best["sampler"], best["steps"])
                at_cost = "" if same_run else (f", or {at_budget['sampler']} with {at_budget['steps']} steps for "
                                               f"error {at_budget['error']:.4g} at the same cost")
                message = (f"ML-EM is not predicted to help here. {head}; run the top level alone with "
                           f"{best['sampler']}, {best['steps']} steps ({best['top_equivalents']:.4g} top-level "
                           f"equivalents) for the same error{at_cost} (speedup {speedup:.3g}x <= 1)")
        return Plan(
            levels=tuple(lv),
            names=tuple(self.names[l] for l in lv),
            dropped=dropped,
            mu=mu,
            steps=n,
            rates=self.rates(mu, levels=lv),
            target=target,
            budget=budget,
            error=error,
            bias=b,
            step_error=step_err(n),
            randomization=math.sqrt(gain * pred.added_variance),
            cost=pred.cost,
            top_equivalents=pred.top_equivalents,
            ladder_cost=pred.ladder_cost,
            em_steps=em_steps,
            em_cost=em_cost,
            em_top_equivalents=em_cost / c_top,
            speedup=speedup,
            helps=helps,
            message=message,
            prediction=pred,
            sampler=None if fit is None else fit.sampler,
            **extra,
        )

    def _single_model_comparison(self, fit: SamplerFit, error: float, cost: float, max_steps: int) -> dict:
        """The top level alone: with ``fit``'s sampler at ML-EM's ``cost`` (top-level equivalents), the
        cheapest measured sampler reaching ``error``, and the smallest error of any measured sampler at ``cost``."""
        b2 = float(self.top_bias) ** 2
        n_same = max(1, int(math.floor(cost + 1e-9)))

        def run(f: SamplerFit, steps: int) -> dict:
            return {"sampler": f.sampler, "steps": steps, "top_equivalents": float(steps),
                    "error": math.sqrt(b2 + f.error(steps) ** 2)}

        fits = [fit] + [f for k, f in sorted(self.samplers.items()) if k != fit.sampler]
        reach = []
        for f in fits:
            steps = f.steps_for(math.sqrt(max(error**2 - b2, 0.0)), max_steps)
            if steps is not None:
                reach.append(run(f, steps))
        return {
            "same_sampler": run(fit, n_same),
            "best_single": min(reach, key=lambda r: r["steps"]) if reach else None,  # ties: the same sampler
            "best_at_budget": min((run(f, n_same) for f in fits), key=lambda r: r["error"]),
        }

    # ------------------------------------------------------------------ reports and files

    def summary(self) -> str:
        """A table for humans: per level its cost, error and delta, then gamma and the step error."""
        K = self.n_levels
        top = float(self.costs[-1])
        ref = "the reference drift" if self.reference == "given" else "the top level"
        delta_bar = np.concatenate([[math.nan], self._delta_rms_in_time(self.deltas)])
        d = self.deltas
        lines = [
            f"Calibration: {K} levels, {len(self.times)} times in [{self.t0:g}, {self.t1:g}], "
            f"{self.n_states} states per time; costs: {self.timing} ({self.cost_unit})",
            f"{'level':>5}  {'name':<14}{'cost':>11}{'cost/top':>10}{'error':>11}"
            f"{'delta rms':>11}{'delta(t first)':>16}{'delta(t last)':>15}",
        ]
        for l in range(K):
            first = f"{d[0, l - 1]:.4g}" if l else "-"
            last = f"{d[-1, l - 1]:.4g}" if l else "-"
            bar = f"{delta_bar[l]:.4g}" if l else "-"
            lines.append(
                f"{l + 1:>5}  {self.names[l][:13]:<14}{self.costs[l]:>11.4g}{self.costs[l] / top:>10.4g}"
                f"{self.errors[l]:>11.4g}{bar:>11}{first:>16}{last:>15}"
            )
        lines.append(f"error: RMS of ||f^l - ref|| against {ref}; delta: RMS of ||f^l - f^(l-1)||")
        if self.gamma is not None:
            se = "n/a (2 levels)" if self.gamma_se is None or math.isnan(self.gamma_se) else f"{self.gamma_se:.3g}"
            fit = ", ".join(str(l + 1) for l in self.fit_levels)
            lines.append(f"gamma = {self.gamma:.3g} +- {se} (levels {fit}; cost ~ error^-gamma)")
        if self.step_error is not None:
            lines.append(
                f"EM step error ~ a h with a = {self.step_error:.4g} (from {self.step_error_steps} and "
                f"{self.step_error_refine * self.step_error_steps} steps); top-level bias {self.top_bias:.4g} "
                f"({self.top_bias_source})"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        gamma = "None" if self.gamma is None else f"{self.gamma:.3g}"
        return (
            f"Calibration({self.n_levels} levels, {len(self.times)} times, timing={self.timing!r}, "
            f"gamma={gamma})"
        )

    def to_dict(self) -> dict:
        """Plain JSON-serialisable data (nan as None)."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "t0": self.t0,
            "t1": self.t1,
            "times": self.times.tolist(),
            "names": list(self.names),
            "costs": self.costs.tolist(),
            "ladder_costs": self.ladder_costs.tolist(),
            "timing": self.timing,
            "cost_unit": self.cost_unit,
            "pairwise": self.pairwise.tolist(),
            "errors_t": self.errors_t.tolist(),
            "reference": self.reference,
            "n_states": self.n_states,
            "gamma": _none_if_nan(self.gamma),
            "gamma_se": _none_if_nan(self.gamma_se),
            "fit_levels": list(self.fit_levels),
            "step_error": _none_if_nan(self.step_error),
            "step_error_steps": self.step_error_steps,
            "step_error_refine": self.step_error_refine,
            "top_bias": _none_if_nan(self.top_bias),
            "top_bias_source": self.top_bias_source,
            "samplers": {k: v.to_dict() for k, v in self.samplers.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """Inverse of :meth:`to_dict`; raises ValueError saying what is wrong."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a calibration (expected \"format\": \"{FORMAT}\")")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported calibration format version {d.get('version')!r} (expected {FORMAT_VERSION})")
        required = ["t0", "t1", "times", "names", "costs", "ladder_costs", "timing", "cost_unit", "pairwise",
                    "errors_t", "reference", "n_states"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"missing fields {missing}")
        try:
            times = np.asarray(d["times"], dtype=np.float64)
            costs = np.asarray(d["costs"], dtype=np.float64)
            ladder_costs = np.asarray(d["ladder_costs"], dtype=np.float64)
            pairwise = np.asarray(d["pairwise"], dtype=np.float64)
            errors_t = np.asarray(d["errors_t"], dtype=np.float64)
            t0, t1 = float(d["t0"]), float(d["t1"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"a numeric field is malformed ({e})") from None
        T, K = len(times), len(d["names"])
        shapes = {
            "times": (times.shape, (T,)),
            "costs": (costs.shape, (K,)),
            "ladder_costs": (ladder_costs.shape, (K,)),
            "pairwise": (pairwise.shape, (T, K, K)),
            "errors_t": (errors_t.shape, (T, K)),
        }
        for name, (got, want) in shapes.items():
            if got != want:
                raise ValueError(f"field {name!r} has shape {got}, expected {want} ({T} times, {K} levels)")
        for name, arr in (("times", times), ("costs", costs), ("pairwise", pairwise), ("errors_t", errors_t)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"field {name!r} has non-finite values")
        if K < 2 or T < 1 or np.any(costs <= 0) or np.any(pairwise < 0) or not t1 > t0:
            raise ValueError(
                "inconsistent values (need K >= 2 levels, positive costs, t1 > t0, nonnegative differences)"
            )

        def opt(key, kind):
            v = d.get(key)
            return None if v is None else kind(v)

        return cls(
            t0=t0,
            t1=t1,
            times=times,
            names=tuple(str(n) for n in d["names"]),
            costs=costs,
            ladder_costs=ladder_costs,
            timing=str(d["timing"]),
            cost_unit=str(d["cost_unit"]),
            pairwise=pairwise,
            errors_t=errors_t,
            reference=str(d["reference"]),
            n_states=int(d["n_states"]),
            gamma=opt("gamma", float),
            gamma_se=math.nan if d.get("gamma") is not None and d.get("gamma_se") is None else opt("gamma_se", float),
            fit_levels=tuple(int(l) for l in d.get("fit_levels", [])),
            step_error=opt("step_error", float),
            step_error_steps=opt("step_error_steps", int),
            step_error_refine=opt("step_error_refine", int),
            top_bias=opt("top_bias", float),
            top_bias_source=str(d.get("top_bias_source", "none")),
            samplers=_sampler_fits(d.get("samplers") or {}),
        )

    def plot(self, path) -> None:
        """Write a PNG of delta_l(t) and of error against cost with the gamma fit."""
        from .plot import plot_calibration

        plot_calibration(self, path)

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON, atomically (a temporary file, then ``os.replace``)."""
        write_json(path, self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def load(cls, path) -> "Calibration":
        """Read a file written by :meth:`save`; ValueError naming the file if it is not one."""
        path = os.fspath(path)
        with open(path) as f:
            text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a calibration file: invalid JSON ({e})") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: invalid calibration file: {e}") from None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return self.to_dict() == other.to_dict()


# ----------------------------------------------------------------------------- helpers


def _sampler_fits(d) -> dict:
    if not isinstance(d, dict):
        raise ValueError("field 'samplers': expected an object {name: fit}")
    out = {}
    for name, v in d.items():
        try:
            out[str(name)] = SamplerFit.from_dict(v)
        except ValueError as e:
            raise ValueError(f"field 'samplers', {name!r}: {e}") from None
    return out


def _check_mu(mu) -> float:
    try:
        mu = float(mu)
    except (TypeError, ValueError):
        raise TypeError(f"mu: expected a number, got {mu!r}") from None
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu: expected a finite number >= 0, got {mu}")
    return mu


def _check_positive(name: str, v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {v!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {v}")
    return v


def _none_if_nan(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _added_variance(mus: np.ndarray, d_true, rpm, w, h) -> np.ndarray:
    """sum_n h^2 sum_l delta_l(t_n)^2 (1 / p_{n,l} - 1) for each mu in ``mus`` (G,) -> (G,)."""
    p = np.minimum(1.0, mus[:, None, None] * (rpm * h)[None])
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(d_true[None] > 0, d_true[None] ** 2 * (1.0 / p - 1.0), 0.0)
    return h**2 * (per.sum(2) @ w)


def _mean_cost(mus: np.ndarray, rpm, w, h, c) -> np.ndarray:
    """Expected cost per sample for each mu in ``mus`` (G,) -> (G,); c: the kept levels' costs (L,)."""
    q = 1.0 - np.minimum(1.0, mus[:, None, None] * (rpm * h)[None])  # (G, M, L-1)
    q_next = np.concatenate([q[:, :, 1:], np.ones_like(q[:, :, :1])], 2)
    needed = 1.0 - q * q_next  # level i >= 1 is needed unless corrections i and i + 1 both stay off
    return c[0] * w.sum() + (needed @ c[1:]) @ w


def _search_mu(ok, rh: np.ndarray, smallest: bool) -> float:
    """The smallest (or largest) mu with ``ok(mu)`` True, by refining a log grid.

    ``ok`` maps an array of mu to booleans and must be monotone: True above (``smallest``)
    or below a threshold. rh: rate per unit mu times h, (M, L-1); the range ends where every
    p = min(1, mu rh) reaches 1 (beyond it nothing changes) and starts 20 decades below
    the first p = 1.
    """
    if not np.any(rh > 0):
        return 0.0  # every delta is 0: the rates do not matter
    hi = math.log(1.0 / float(rh[rh > 0].min()))
    lo = math.log(1.0 / float(rh.max())) - 46.0
    for _ in range(4):
        grid = np.linspace(lo, hi, 17)
        good = ok(np.exp(grid))
        if smallest:
            if good[0]:
                return float(math.exp(grid[0]))
            i = int(np.argmax(good))  # the first good point; the last one (all p = 1) is good
            lo, hi = grid[i - 1], grid[i]
        else:
            if good[-1]:
                return float(math.exp(grid[-1]))
            i = int(np.argmin(good))  # the first bad point; the first one (tiny rates) is good
            if i == 0:
                return float(math.exp(grid[0]))
            lo, hi = grid[i - 1], grid[i]
    return float(math.exp(hi if smallest else lo))


def _geometric_steps(lo: int, hi: int) -> List[int]:
    """Step counts lo, ~lo sqrt(2), ~2 lo, ... up to hi (both included), increasing."""
    out, k = [], 0
    while True:
        n = int(math.ceil(lo * 2 ** (k / 2) - 1e-9))
        if n > hi:
            break
        if not out or n > out[-1]:
            out.append(n)
        k += 1
    if not out or out[-1] != hi:
        out.append(hi)
    return out
