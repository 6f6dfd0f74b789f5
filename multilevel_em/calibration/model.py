"""The measured ladder as data: :class:`Calibration`, its fields, derived quantities and JSON file.

A :class:`Calibration` holds what :func:`~multilevel_em.calibrate` measured (costs, the
pairwise RMS differences of the levels at a few times, errors, gamma, the EM step-error
coefficient and the top level's bias).  Everything else is derived from it elsewhere, and its
methods of the same names call those modules:

* :mod:`.prediction`: :meth:`Calibration.rates` (lambda_l(t) = mu delta_l(t) / sqrt(C_l), C_l = c_l +
  c_{l-1}, docs/method.md, "Choosing the rates"), :meth:`Calibration.uniform_rates`, :meth:`Calibration.predict`;
* :mod:`.planning`: :meth:`Calibration.plan` (levels, steps and mu for a target error or a budget,
  against EM or the measured samplers) and :meth:`Calibration.plan_calls` (a fixed call grid), worded
  by :mod:`.verdicts`;
* :mod:`.rates`: the rate math they share; :mod:`.plot`: :meth:`Calibration.plot`.

Units: costs are in ``Calibration.cost_unit`` (seconds, FLOPs or the ladder's units, per
sample); "top-level equivalents" divide by the top level's cost; ``ladder_cost`` uses the
ladder's own costs, the units of :attr:`Solution.cost_per_sample <multilevel_em.Solution.cost_per_sample>`.
Errors are RMS over samples of Euclidean norms, in the state's units.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .._io import write_json
from . import planning, prediction
from .fields import FieldError, check_keys, integer, integers, join, optional_real, real, real_array, text
from .pipeline_measurements import PipelineMeasurements
from .planning import CallPlan, Plan
from .plot import plot_calibration
from .prediction import Prediction
from .rates import PiecewiseLinearRate
from .samplers import SamplerFit

__all__ = ["CallPlan", "Calibration", "Plan", "Prediction", "PiecewiseLinearRate", "ScheduleCalibration"]

FORMAT = "multilevel_em.Calibration"
FORMAT_VERSION = 1
#: How ``Calibration.costs`` were obtained, and what the levels' errors are measured against.
TIMINGS = ("wall", "flops", "given")
REFERENCES = ("given", "top")


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
        schedules: measurements along each sampler's own calls for the schedule planner,
            ``{name: ScheduleCalibration}``; empty unless measured (``MultilevelPipeline.calibrate_schedules``).
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
    schedules: dict = field(default_factory=dict)

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

    def level_indices(self, levels: Optional[Sequence[int]]) -> Tuple[int, ...]:
        """``levels`` (0-based indices of a sub-ladder, default all) sorted and checked: 2 or more, in range."""
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

    def corrections(self, levels: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
        """delta of each correction of the sub-ladder at the measured times, (T, L-1), and C, (L-1,)."""
        lv = np.asarray(levels)
        delta = self.pairwise[:, lv[1:], lv[:-1]]
        C = self.costs[lv[1:]] + self.costs[lv[:-1]]
        return delta, C

    def delta_rms_in_time(self, delta: np.ndarray) -> np.ndarray:
        """sqrt of the time average over [t0, t1] of delta(t)^2 (the interpolant), per column."""
        ts = np.linspace(self.t0, self.t1, 4097)
        sq = np.stack([np.interp(ts, self.times, delta[:, c]) ** 2 for c in range(delta.shape[1])], 1)
        mean_sq = ((sq[1:] + sq[:-1]) / 2).mean(0)  # trapezoid rule on a uniform grid
        return np.sqrt(mean_sq)

    # ------------------------------------------------------------------ rates and predictions (.prediction)

    def rates(self, mu: float, levels: Optional[Sequence[int]] = None) -> List[PiecewiseLinearRate]:
        """Closed-form time-dependent rates lambda_l(t) = mu delta_l(t) / sqrt(C_l), per unit time
        (:func:`.prediction.rates`): ``len(levels) - 1`` callables of t, ready for ``solve(..., rates=...)``."""
        return prediction.rates(self, mu, levels)

    def uniform_rates(self, mu: float, levels: Optional[Sequence[int]] = None) -> List[float]:
        """Constant rates lambda_l = mu delta_l_bar / sqrt(C_l), for comparisons (:func:`.prediction.uniform_rates`)."""
        return prediction.uniform_rates(self, mu, levels)

    def predict(
        self, mu: float, steps: int, *, levels: Optional[Sequence[int]] = None, uniform: bool = False
    ) -> Prediction:
        """Expected cost and added variance per sample of ML-EM with ``rates(mu)`` on ``steps`` uniform steps
        (:func:`.prediction.predict`)."""
        return prediction.predict(self, mu, steps, levels=levels, uniform=uniform)

    # ------------------------------------------------------------------ planning (.planning)

    def plan(
        self,
        target: Optional[float] = None,
        *,
        budget: Optional[float] = None,
        steps: Optional[int] = None,
        max_steps: int = 2**16,
        sampler: Optional[str] = None,
    ) -> Plan:
        """Choose mu, the step count and the levels to keep, for a ``target`` RMS error or a ``budget`` in
        top-level equivalents per sample, optionally inside a measured ``sampler`` (:func:`.planning.plan`,
        which documents the error model, the search and what it raises)."""
        return planning.plan(self, target, budget=budget, steps=steps, max_steps=max_steps, sampler=sampler)

    def plan_calls(
        self, budget: float, times: Sequence[float], spans: Sequence[float], *, levels: Optional[Sequence[int]] = None
    ) -> CallPlan:
        """Closed-form rates sized to ``budget`` top-level equivalents per sample for a sampler whose model calls
        are fixed: call n at ``times[n]`` standing for ``spans[n]`` (shapes (calls,)) (:func:`.planning.plan_calls`)."""
        return planning.plan_calls(self, budget, times, spans, levels=levels)

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

    # ------------------------------------------------------------------ reports and files

    def summary(self) -> str:
        """A table for humans: per level its cost, error and delta, then gamma and the step error."""
        K = self.n_levels
        top = float(self.costs[-1])
        ref = "the reference drift" if self.reference == "given" else "the top level"
        delta_bar = np.concatenate([[math.nan], self.delta_rms_in_time(self.deltas)])
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
        return f"Calibration({self.n_levels} levels, {len(self.times)} times, timing={self.timing!r}, gamma={gamma})"

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
            # only when measured: calibrations without schedule measurements keep their earlier file format
            **({"schedules": {k: v.to_dict() for k, v in self.schedules.items()}} if self.schedules else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        """Inverse of :meth:`to_dict`, checking every field (type, shape, range and consistency with the
        others); raises ValueError (:class:`~multilevel_em.calibration.fields.FieldError`) whose message
        starts with the field at fault, e.g. ``step_error: expected a finite number >= 0, got nan``."""
        return _from_dict(cls, d)

    def plot(self, path) -> None:
        """Write a PNG of delta_l(t) and of error against cost with the gamma fit."""
        plot_calibration(self, path)

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON, atomically (a temporary file, then ``os.replace``)."""
        write_json(path, self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def load(cls, path) -> "Calibration":
        """Read a file written by :meth:`save`, checking every field (:meth:`from_dict`); ValueError
        ``"PATH: field: what is wrong"`` if it is not a valid calibration, OSError if it cannot be read."""
        data = _read_json(path, "calibration")
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None

    def __eq__(self, other) -> bool:
        if not isinstance(other, Calibration):
            return NotImplemented
        return self.to_dict() == other.to_dict()


# ----------------------------------------------------------------------------- helpers


_REQUIRED = (
    "format",
    "version",
    "t0",
    "t1",
    "times",
    "names",
    "costs",
    "ladder_costs",
    "timing",
    "cost_unit",
    "pairwise",
    "errors_t",
    "reference",
    "n_states",
)
_OPTIONAL = (
    "gamma",
    "gamma_se",
    "fit_levels",
    "step_error",
    "step_error_steps",
    "step_error_refine",
    "top_bias",
    "top_bias_source",
    "samplers",
    "schedules",
)


def _from_dict(cls, d) -> "Calibration":
    """:meth:`Calibration.from_dict`: every field checked, in file order, then their consistency."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise FieldError("format", f'not a calibration (expected "format": "{FORMAT}", got {got!r})')
    if d.get("version") != FORMAT_VERSION:
        raise FieldError(
            "version", f"unsupported calibration format version {d.get('version')!r} (expected {FORMAT_VERSION})"
        )
    check_keys(d, "", _REQUIRED, _OPTIONAL)
    t0, t1 = real(d["t0"], "t0"), real(d["t1"], "t1")
    if not t1 > t0:
        raise FieldError("t1", f"expected t1 > t0 = {t0!r}, got {t1!r}")

    names = d["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FieldError("names", f"expected a list of level names (strings), got {names!r:.80}")
    K = len(names)
    if K < 2:
        raise FieldError("names", f"expected 2 or more levels (ML-EM needs at least 2), got {K}")
    times_in = d["times"]
    if not isinstance(times_in, (list, np.ndarray)) or len(times_in) < 1:
        raise FieldError("times", f"expected a non-empty list of times, got {times_in!r:.80}")
    T = len(times_in)
    times = real_array(times_in, "times", (T,), "(times,)")
    if np.any(np.diff(times) <= 0):
        i = int(np.argmax(np.diff(times) <= 0))
        raise FieldError(
            "times",
            f"expected strictly increasing times, but times[{i + 1}] = {float(times[i + 1])!r} <= times[{i}] = {float(times[i])!r}",
        )
    if times[0] < t0 or times[-1] > t1:
        raise FieldError(
            "times", f"expected times in [t0, t1] = [{t0!r}, {t1!r}], got {float(times[0])!r} ... {float(times[-1])!r}"
        )

    costs = real_array(d["costs"], "costs", (K,), "(levels,)")
    ladder_costs = real_array(d["ladder_costs"], "ladder_costs", (K,), "(levels,)")
    for name, c in (("costs", costs), ("ladder_costs", ladder_costs)):
        if np.any(c <= 0):
            i = int(np.argmax(c <= 0))
            raise FieldError(f"{name}[{i}]", f"expected a positive cost, got {float(c[i])!r}")
    _check_nondecreasing("ladder_costs", ladder_costs)
    timing = text(d["timing"], "timing", TIMINGS)
    if timing == "given" and not np.array_equal(costs, ladder_costs):
        raise FieldError(
            "costs",
            f"with timing 'given' the costs are the ladder's own: expected ladder_costs {ladder_costs.tolist()}, got {costs.tolist()}",
        )
    if timing == "flops":  # counted, not timed: a level counted cheaper than the one below is out of order
        _check_nondecreasing("costs", costs)
    cost_unit = text(d["cost_unit"], "cost_unit")

    pairwise = real_array(d["pairwise"], "pairwise", (T, K, K), "(times, levels, levels)", lo=0.0)
    diag = np.einsum("tkk->tk", pairwise)
    if np.any(diag != 0):
        i, k = (int(j) for j in np.argwhere(diag != 0)[0])
        raise FieldError(
            f"pairwise[{i}][{k}][{k}]", f"expected 0 (a level's difference from itself), got {float(diag[i, k])!r}"
        )
    asym = ~np.isclose(pairwise, pairwise.transpose(0, 2, 1), rtol=1e-9, atol=0.0)
    if asym.any():
        i, l, j = (int(x) for x in np.argwhere(asym)[0])
        raise FieldError(
            f"pairwise[{i}][{l}][{j}]",
            f"expected a symmetric matrix: {float(pairwise[i, l, j])!r} != pairwise[{i}][{j}][{l}] = {float(pairwise[i, j, l])!r}",
        )
    errors_t = real_array(d["errors_t"], "errors_t", (T, K), "(times, levels)", lo=0.0)
    reference = text(d["reference"], "reference", REFERENCES)
    if reference == "top":
        off = ~np.isclose(errors_t, pairwise[:, :, K - 1], rtol=1e-9, atol=0.0)
        if off.any():
            i, l = (int(x) for x in np.argwhere(off)[0])
            raise FieldError(
                f"errors_t[{i}][{l}]",
                f"with reference 'top' the errors are the differences from the top level: expected pairwise[{i}][{l}][{K - 1}] = {float(pairwise[i, l, K - 1])!r}, got {float(errors_t[i, l])!r}",
            )
    n_states = integer(d["n_states"], "n_states", lo=1)

    gamma = optional_real(d.get("gamma"), "gamma")
    gamma_se = d.get("gamma_se")
    fit_levels = integers(d.get("fit_levels", []), "fit_levels", lo=0, hi=K - 1)
    if gamma is None:
        if gamma_se is not None and not (isinstance(gamma_se, float) and math.isnan(gamma_se)):
            raise FieldError("gamma_se", f"expected null without gamma, got {gamma_se!r}")
        if fit_levels:
            raise FieldError("fit_levels", f"expected [] without gamma, got {list(fit_levels)}")
        gamma_se = None
    else:
        gamma_se = (
            math.nan
            if gamma_se is None or (isinstance(gamma_se, float) and math.isnan(gamma_se))
            else real(gamma_se, "gamma_se", lo=0.0)
        )
        if len(fit_levels) < 2 or any(b <= a for a, b in zip(fit_levels, fit_levels[1:])):
            raise FieldError(
                "fit_levels",
                f"expected 2 or more increasing 0-based level indices (the levels gamma was fitted on), got {list(fit_levels)}",
            )
        if reference == "top" and fit_levels[-1] == K - 1:
            raise FieldError(
                "fit_levels",
                f"level index {K - 1} is the top level, the reference itself (error 0): it cannot be in the fit, got {list(fit_levels)}",
            )

    step_error = optional_real(d.get("step_error"), "step_error", lo=0.0)
    steps = d.get("step_error_steps")
    refine = d.get("step_error_refine")
    if step_error is None:
        for key, v in (("step_error_steps", steps), ("step_error_refine", refine)):
            if v is not None:
                raise FieldError(key, f"expected null without step_error, got {v!r}")
    else:
        if steps is None or refine is None:
            key = "step_error_steps" if steps is None else "step_error_refine"
            raise FieldError(key, "missing: step_error was measured with N and m N steps; give both")
        steps = integer(steps, "step_error_steps", lo=1)
        refine = integer(refine, "step_error_refine", lo=2)
    top_bias = optional_real(d.get("top_bias"), "top_bias", lo=0.0)
    if step_error is not None and top_bias is None:
        raise FieldError("top_bias", "missing: expected a number >= 0 with step_error (the two are measured together)")
    if reference == "top" and top_bias not in (None, 0.0):
        raise FieldError(
            "top_bias", f"expected 0 with reference 'top' (the top level is its own reference), got {top_bias!r}"
        )
    top_bias_source = text(d.get("top_bias_source", "none"), "top_bias_source")

    samplers = d.get("samplers")
    samplers = {} if samplers is None else samplers
    if not isinstance(samplers, dict):
        raise FieldError("samplers", f"expected an object {{name: fit}}, got {samplers!r:.80}")
    fits = {}
    for name, v in samplers.items():
        where = join("samplers", name)
        fit = SamplerFit.from_dict(v, where=where, n_levels=K)
        if fit.sampler != name:
            raise FieldError(
                join(where, "sampler"), f"expected {name!r} (the name it is filed under), got {fit.sampler!r}"
            )
        fits[name] = fit

    schedules = d.get("schedules")
    schedules = {} if schedules is None else schedules
    if not isinstance(schedules, dict):
        raise FieldError("schedules", f"expected an object {{sampler: measurements}}, got {schedules!r:.80}")
    measured = {name: ScheduleCalibration.from_dict(v, join("schedules", name), K) for name, v in schedules.items()}

    return cls(
        t0=t0,
        t1=t1,
        times=times,
        names=tuple(names),
        costs=costs,
        ladder_costs=ladder_costs,
        timing=timing,
        cost_unit=cost_unit,
        pairwise=pairwise,
        errors_t=errors_t,
        reference=reference,
        n_states=n_states,
        gamma=gamma,
        gamma_se=gamma_se,
        fit_levels=fit_levels,
        step_error=step_error,
        step_error_steps=steps,
        step_error_refine=refine,
        top_bias=top_bias,
        top_bias_source=top_bias_source,
        samplers=fits,
        schedules=measured,
    )


@dataclass(frozen=True)
class ScheduleCalibration:
    """What the schedule planner (:func:`~multilevel_em.calibration.schedules.plan_schedules`) needs for one
    sampler, measured along that sampler's own calls from fixed noise (``MultilevelPipeline.calibrate_schedules``
    or :meth:`multilevel_em.diffusion.MultilevelModel.calibrate` with ``run(num_inference_steps)``).

    Attributes:
        calls: the level differences delta_l(t) at the sampler's calls and the levels' costs (a
            :class:`Calibration` in the model's time t = (timestep + 1) / T).
        pipeline: the step-error curve, the sensitivity and the switches (:class:`PipelineMeasurements`).
    """

    calls: Calibration
    pipeline: PipelineMeasurements

    def __post_init__(self):
        if not isinstance(self.calls, Calibration):
            raise TypeError(f"calls: expected a Calibration, got {type(self.calls).__name__}")
        if not isinstance(self.pipeline, PipelineMeasurements):
            raise TypeError(f"pipeline: expected PipelineMeasurements, got {type(self.pipeline).__name__}")
        if self.calls.schedules:
            raise ValueError("calls: a sampler's calibration along its calls holds no schedules of its own")
        if self.pipeline.num_levels and self.pipeline.num_levels != self.calls.n_levels:
            raise ValueError(
                f"pipeline: measured on {self.pipeline.num_levels} levels, the calls' calibration has "
                f"{self.calls.n_levels}"
            )

    def to_dict(self) -> dict:
        return {"calls": self.calls.to_dict(), "pipeline": self.pipeline.to_dict()}

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        write_json(path, self.to_dict(), indent=1, allow_nan=False)

    @classmethod
    def load(cls, path) -> "ScheduleCalibration":
        """Read a file written by :meth:`save`, checking every field; ValueError ``"PATH: field: what is wrong"``."""
        data = _read_json(path, "schedule calibration")
        try:
            return cls.from_dict(data, "schedule calibration")
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}: {e}") from None

    @classmethod
    def from_dict(cls, d, where: str = "schedules", n_levels: Optional[int] = None) -> "ScheduleCalibration":
        """Inverse of :meth:`to_dict`, every field checked; errors start with ``where`` and the field."""
        if not isinstance(d, dict):
            raise FieldError(where, f"expected an object with calls and pipeline, got {d!r:.80}")
        check_keys(d, where, ("calls", "pipeline"), ())
        try:
            calls = Calibration.from_dict(d["calls"])
        except FieldError as e:
            raise e.within(join(where, "calls")) from None
        if n_levels is not None and calls.n_levels != n_levels:
            raise FieldError(join(where, "calls"), f"expected {n_levels} levels, got {calls.n_levels}")
        try:
            pipeline = PipelineMeasurements.from_dict(d["pipeline"])
            return cls(calls, pipeline)
        except (TypeError, ValueError) as e:
            raise FieldError(join(where, "pipeline"), str(e)) from None


def _check_nondecreasing(name: str, c: np.ndarray) -> None:
    for i in range(1, len(c)):
        if c[i] < c[i - 1]:
            raise FieldError(
                name,
                f"expected nondecreasing costs (cheapest level first), but {name}[{i}] = {float(c[i])!r} < {name}[{i - 1}] = {float(c[i - 1])!r}",
            )


def _none_if_nan(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _read_json(path, what: str):
    """The JSON in ``path``; ValueError ``"PATH: ..."`` naming ``what`` the file should be, OSError if it cannot be
    read."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not a {what} file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data = json.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a {what} file: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a {what} file: invalid JSON ({e})") from None
    return data
